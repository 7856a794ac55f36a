"""Dynamic batching: a generic async micro-batcher, one per (model, version, backend) key.

Callers :meth:`MicroBatcher.submit` an array whose first axis is its batch (one image = 1 row);
concurrent submissions are concatenated into one call of ``run`` holding at most
``max_batch_size`` rows, and each caller gets back exactly its own rows of the result.

Dispatch policy (a batch leaves the queue when the first of these holds):

1. it reached ``max_batch_size`` rows;
2. fewer than ``max_concurrent_batches`` batches are running, i.e. the backend has spare
   capacity: waiting would only add latency (so a lone client never waits);
3. its oldest request waited ``max_queue_delay_s``.

So batches grow while the backend is busy and the queueing delay stays bounded. Errors: when
``run`` raises, every caller of that batch gets the exception; with ``isolate(exc)`` true and
more than one caller, each caller's rows are re-run alone so an error reaches only the request
it belongs to. A caller that is cancelled (client gone, time up) while queued is removed from the
queue; once its rows were sent, the call completes and its answer is dropped (``on_cancel``
reports which: ``batch_queue`` or ``sent``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np

Array = np.ndarray[Any, Any]
RunFn = Callable[[Array, list[Any]], Awaitable[Array]]
"""``run(batch, tags)``: ``tags`` are the callers' :meth:`MicroBatcher.submit` tags, in row order."""
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class BatchOutcome:
    """One caller's share of a batch: its rows, time queued, time in ``run``, batch size (rows)."""

    value: Array
    queue_s: float
    run_s: float
    batch_rows: int


@dataclass(eq=False)  # identity: the queue removes a cancelled caller by ``is``, never by its array
class _Pending:
    x: Array
    tag: Any
    future: asyncio.Future[BatchOutcome]
    enqueued: float
    taken: bool = False


class MicroBatcher:
    """Coalesces concurrent :meth:`submit` calls into batched ``run`` calls (see module doc)."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int = 32,
        max_queue_delay_s: float = 0.002,
        max_concurrent_batches: int = 1,
        isolate: Callable[[BaseException], bool] | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_cancel: Callable[[str], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size and max_concurrent_batches must be at least 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_concurrent_batches = max_concurrent_batches
        self._isolate = isolate
        self._on_batch = on_batch
        self._on_cancel = on_cancel
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._running = 0
        self._wakeup = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Future[Any]] = set()
        self._closed = False

    @property
    def running_batches(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, x: Array, tag: Any = None) -> BatchOutcome:
        """Queue ``x`` (first axis = rows) and wait for its rows of the batched result.

        ``tag`` (e.g. the request id) is handed to ``run`` with the batch. A caller cancelled while
        waiting leaves the queue, or, once sent, lets the call complete (see :meth:`start`).
        """
        return await self.start(x, tag)

    def start(self, x: Array, tag: Any = None) -> asyncio.Future[BatchOutcome]:
        """Queue ``x`` and return the future of its rows, without a task of its own. Cancelling the
        future removes a queued request from the queue; once sent, the call completes and its
        answer is dropped."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        if not self._queue and self._running < self.max_concurrent_batches:
            return self._start_inline(x, tag)
        loop = asyncio.get_running_loop()
        pending = _Pending(x, tag, loop.create_future(), time.perf_counter())
        pending.future.add_done_callback(partial(self._left, pending))
        self._queue.append(pending)
        self._queued_rows += x.shape[0]
        if self._collector is None or self._collector.done():
            self._collector = loop.create_task(self._collect())
        self._wakeup.set()
        return pending.future

    def _left(self, pending: _Pending, future: asyncio.Future[BatchOutcome]) -> None:
        """A queued caller's future is done: when cancelled, it leaves the queue if still there."""
        if not future.cancelled():
            return
        if not pending.taken:
            try:
                self._queue.remove(pending)
            except ValueError:
                pass  # the collector already dropped it
            else:
                self._queued_rows -= pending.x.shape[0]
        self._cancelled("sent" if pending.taken else "batch_queue")

    def _cancelled(self, stage: str) -> None:
        if self._on_cancel is not None:
            self._on_cancel(stage)

    def _start_inline(self, x: Array, tag: Any) -> asyncio.Future[BatchOutcome]:
        """Fast path: nothing queued and spare capacity, so the caller's rows are a batch of one, run
        at once in their own task; the caller gets a shield of it (cancelled, the call completes)."""
        rows = x.shape[0]
        self._running += 1
        if self._on_batch is not None:
            self._on_batch(rows)
        task = asyncio.ensure_future(self._run_alone(x, tag, rows))
        self._batches.add(task)
        task.add_done_callback(self._inline_done)
        outer = asyncio.shield(task)
        outer.add_done_callback(self._inline_left)
        return outer

    async def _run_alone(self, x: Array, tag: Any, rows: int) -> BatchOutcome:
        start = time.perf_counter()
        y = await self._run(x, [tag])
        if y.shape[0] != rows:
            raise RuntimeError(f"batched call returned {y.shape[0]} rows for {rows} inputs")
        return BatchOutcome(y, 0.0, time.perf_counter() - start, rows)

    def _inline_left(self, outer: asyncio.Future[BatchOutcome]) -> None:
        if outer.cancelled():
            self._cancelled("sent")

    async def close(self) -> None:
        """Stop collecting, fail queued callers and wait for running batches."""
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("batcher closed"))
        self._queued_rows = 0
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)

    def _inline_done(self, task: asyncio.Future[BatchOutcome]) -> None:
        self._batches.discard(task)
        self._running -= 1
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left must not leave it "never retrieved"
        if self._queue:
            self._wakeup.set()

    # ------------------------------------------------------------------ internals

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._drop_cancelled()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued + self.max_queue_delay_s
            while (
                self._queued_rows < self.max_batch_size
                and self._running >= self.max_concurrent_batches
            ):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                timer = loop.call_later(remaining, self._wakeup.set)
                try:
                    await self._wakeup.wait()
                finally:
                    timer.cancel()
                self._drop_cancelled()
                if not self._queue:
                    break
            if not self._queue:
                continue
            items = self._take()
            self._running += 1
            task = loop.create_task(self._execute(items))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queued_rows -= self._queue.popleft().x.shape[0]

    def _take(self) -> list[_Pending]:
        items: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            n = head.x.shape[0]
            if items and rows + n > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= n
            if head.future.done():
                continue
            head.taken = True
            items.append(head)
            rows += n
        return items

    async def _execute(self, items: list[_Pending]) -> None:
        try:
            if items:
                await self._run_items(items)
        finally:
            self._running -= 1
            self._wakeup.set()

    async def _run_items(self, items: list[_Pending], isolated: bool = False) -> None:
        start = time.perf_counter()
        x = items[0].x if len(items) == 1 else np.concatenate([p.x for p in items], axis=0)
        rows = x.shape[0]
        if self._on_batch is not None:
            self._on_batch(rows)
        try:
            y = await self._run(x, [p.tag for p in items])
            if y.shape[0] != rows:
                raise RuntimeError(f"batched call returned {y.shape[0]} rows for {rows} inputs")
        except Exception as exc:
            if not isolated and len(items) > 1 and self._isolate is not None and self._isolate(exc):
                await asyncio.gather(*(self._run_items([p], isolated=True) for p in items))
                return
            for p in items:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        run_s = time.perf_counter() - start
        offset = 0
        for p in items:
            n = p.x.shape[0]
            if not p.future.done():
                p.future.set_result(BatchOutcome(y[offset : offset + n], start - p.enqueued, run_s, rows))
            offset += n


class BatcherPool(Generic[K]):
    """Lazily created :class:`MicroBatcher` per key (e.g. ``(model, version, backend)``)."""

    def __init__(self, factory: Callable[[K], MicroBatcher]) -> None:
        self._factory = factory
        self._batchers: dict[K, MicroBatcher] = {}

    def get(self, key: K) -> MicroBatcher:
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = self._factory(key)
        return batcher

    async def drop(self, match: Callable[[K], bool]) -> None:
        """Close and forget the batchers whose key matches (queued requests are still answered)."""
        keys = [k for k in self._batchers if match(k)]
        await asyncio.gather(*(self._batchers.pop(k).close() for k in keys))

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self._batchers.values()))
        self._batchers.clear()
