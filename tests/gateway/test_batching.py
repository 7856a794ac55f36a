"""The micro-batcher: coalescing, slicing, bounded delay, error routing, cancellation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.support.wait import DEADLINE_S, eventually
from triserve_gateway.batching import BatcherPool, MicroBatcher


class Runner:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.tags: list[list[object]] = []
        self.fail: BaseException | None = None
        self.poison: float | None = None  # rows with this value make the whole batch fail

    async def __call__(self, x: np.ndarray, tags: list[object]) -> np.ndarray:
        self.batches.append(x.shape[0])
        self.tags.append(tags)
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if self.poison is not None and (x == self.poison).any():
            raise ValueError("poisoned row")
        return x * 2


def rows(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 3), value, dtype=np.float32)


async def test_lone_request_is_not_delayed() -> None:
    run = Runner()
    b = MicroBatcher(run, max_batch_size=8, max_queue_delay_s=3600.0)
    # idle backend: dispatched at once, not after the (hour-long) queue delay
    out = await asyncio.wait_for(b.submit(rows(1)), DEADLINE_S)
    assert out.queue_s == 0.0 and run.batches == [1]
    np.testing.assert_array_equal(out.value, rows(2))
    await b.close()


async def test_concurrent_requests_coalesce_and_each_gets_its_slice() -> None:
    run = Runner(delay=0.02)
    b = MicroBatcher(run, max_batch_size=64, max_queue_delay_s=0.05, max_concurrent_batches=1)
    outs = await asyncio.gather(*(b.submit(rows(i, n=1 + i % 3), tag=i) for i in range(30)))
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out.value, rows(2 * i, n=1 + i % 3))
    assert sum(run.batches) == sum(1 + i % 3 for i in range(30))
    assert len(run.batches) < 30 and max(run.batches) > 1
    assert sorted(t for tags in run.tags for t in tags) == list(range(30))  # type: ignore[type-var]
    await b.close()


async def test_max_batch_size_is_respected() -> None:
    run = Runner(delay=0.01)
    b = MicroBatcher(run, max_batch_size=4, max_queue_delay_s=0.05, max_concurrent_batches=1)
    await asyncio.gather(*(b.submit(rows(i)) for i in range(20)))
    assert max(run.batches) <= 4 and sum(run.batches) == 20
    # An item bigger than max_batch_size is sent alone, not split or refused.
    out = await b.submit(rows(1, n=9))
    assert out.value.shape == (9, 3) and run.batches[-1] == 9
    await b.close()


async def test_queue_delay_bounds_waiting_while_backend_busy() -> None:
    release = asyncio.Event()

    async def run(x: np.ndarray, tags: list[object]) -> np.ndarray:
        if 0 in tags:
            await release.wait()  # the first batch stays busy until the test releases it
        return x * 2

    b = MicroBatcher(run, max_batch_size=100, max_queue_delay_s=0.02, max_concurrent_batches=1)
    first = asyncio.ensure_future(b.submit(rows(0), tag=0))
    await eventually(lambda: b.running_batches == 1, "the first batch runs")
    # dispatched once it waited max_queue_delay, concurrently with the busy batch (not after it)
    second = await asyncio.wait_for(b.submit(rows(1), tag=1), DEADLINE_S)
    assert not first.done() and second.queue_s >= 0.02
    np.testing.assert_array_equal(second.value, rows(2))
    release.set()
    await first
    await b.close()


async def test_error_reaches_every_request_of_failed_batch() -> None:
    run = Runner(delay=0.01)
    run.fail = RuntimeError("backend down")
    b = MicroBatcher(run, max_batch_size=8, max_queue_delay_s=0.05, max_concurrent_batches=1)
    results = await asyncio.gather(*(b.submit(rows(i)) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await b.close()


async def test_isolated_errors_reach_only_their_request() -> None:
    run = Runner(delay=0.01)
    run.poison = 3.0
    b = MicroBatcher(
        run, max_batch_size=16, max_queue_delay_s=0.05, max_concurrent_batches=1,
        isolate=lambda e: isinstance(e, ValueError),
    )
    results = await asyncio.gather(*(b.submit(rows(i)) for i in range(6)), return_exceptions=True)
    for i, r in enumerate(results):
        if i == 3:
            assert isinstance(r, ValueError)
        else:
            assert not isinstance(r, BaseException)
            np.testing.assert_array_equal(r.value, rows(2 * i))
    await b.close()


async def test_cancelled_caller_is_dropped_and_others_served() -> None:
    run = Runner(delay=0.05)
    b = MicroBatcher(run, max_batch_size=16, max_queue_delay_s=0.2, max_concurrent_batches=1)
    busy = asyncio.ensure_future(b.submit(rows(0)))
    await asyncio.sleep(0.01)
    doomed = asyncio.ensure_future(b.submit(rows(5)))
    kept = asyncio.ensure_future(b.submit(rows(6)))
    await asyncio.sleep(0.005)
    doomed.cancel()
    out = await kept
    np.testing.assert_array_equal(out.value, rows(12))
    await busy
    assert sum(run.batches) == 2  # the cancelled row was never sent
    await b.close()


async def test_wrong_row_count_from_run_is_an_error() -> None:
    async def bad(x: np.ndarray, tags: list[object]) -> np.ndarray:
        return x[:1]

    b = MicroBatcher(bad, max_batch_size=8, max_queue_delay_s=0.05)
    with pytest.raises(RuntimeError, match="rows"):
        await b.submit(rows(1, n=2))
    await b.close()


async def test_pool_keeps_one_batcher_per_key() -> None:
    made: list[str] = []

    def factory(key: str) -> MicroBatcher:
        made.append(key)
        return MicroBatcher(Runner())

    pool: BatcherPool[str] = BatcherPool(factory)
    assert pool.get("a") is pool.get("a")
    assert pool.get("b") is not pool.get("a")
    assert made == ["a", "b"]
    await pool.close()


async def test_cancelled_callers_leave_the_queue_and_sent_work_completes() -> None:
    release = asyncio.Event()
    finished: list[int] = []

    async def run(x: np.ndarray, tags: list[object]) -> np.ndarray:
        await release.wait()
        finished.append(x.shape[0])
        return x

    stages: list[str] = []
    b = MicroBatcher(run, max_batch_size=8, max_queue_delay_s=60, max_concurrent_batches=1,
                     on_cancel=stages.append)
    sent = asyncio.create_task(b.submit(np.ones((1, 2))))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(b.submit(np.ones((1, 2)))) for _ in range(3)]
    await asyncio.sleep(0)
    assert b.queued == 3
    queued[0].cancel()
    sent.cancel()
    await asyncio.gather(queued[0], sent, return_exceptions=True)
    assert sorted(stages) == ["batch_queue", "sent"] and b.queued == 2
    release.set()
    results = await asyncio.gather(*queued[1:])
    assert [r.value.shape[0] for r in results] == [1, 1]
    assert finished == [1, 2]  # the abandoned call still completed; the two left ran as one batch
    await b.close()


async def test_started_futures_cancel_like_submit_without_a_task_per_request() -> None:
    release = asyncio.Event()
    finished: list[int] = []

    async def run(x: np.ndarray, tags: list[object]) -> np.ndarray:
        await release.wait()
        finished.append(x.shape[0])
        return x

    stages: list[str] = []
    b = MicroBatcher(run, max_batch_size=8, max_queue_delay_s=60, max_concurrent_batches=1,
                     on_cancel=stages.append)
    sent = b.start(np.ones((1, 2)))  # inline: a shield of the call's task
    queued = [b.start(np.full((1, 2), float(i))) for i in range(3)]  # the callers' own futures
    assert not any(isinstance(f, asyncio.Task) for f in [sent, *queued]) and b.queued == 3
    queued[1].cancel()
    sent.cancel()
    await asyncio.sleep(0)  # done callbacks run
    assert sorted(stages) == ["batch_queue", "sent"] and b.queued == 2
    release.set()
    results = await asyncio.wait_for(asyncio.gather(queued[0], queued[2]), DEADLINE_S)
    assert [float(r.value[0, 0]) for r in results] == [0.0, 2.0]
    assert finished == [1, 2]  # the abandoned call still completed; the two left ran as one batch
    await b.close()
