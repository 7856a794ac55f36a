"""Gateway core with in-process fake backends: routing, retries/failover, breaker, batching."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from tests.gateway.fakes import SPEC, FakeBackend, catalog, digit_png, fakes, routing
from tests.support.wait import eventually
from triserve_common.errors import BackendTimeoutError, ModelNotFoundError, ModelNotReadyError
from triserve_common.metrics import new_registry
from triserve_gateway.errors import (
    BackendError,
    BackendRejectedError,
    BackendUnavailableError,
    UnknownBackendError,
)
from triserve_gateway.gateway import Gateway, batch_share
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.preprocess import ImagePreprocessor
from triserve_gateway.targets import RoutedResult

PRE = ImagePreprocessor(SPEC)


def batch(*digits: int) -> np.ndarray:
    return np.concatenate([PRE(digit_png(d)) for d in digits])


def labels(y: np.ndarray) -> list[int]:
    return [int(i) for i in y.argmax(axis=1)]


async def infer(
    gw: Gateway, model: str, version: str | None, x: np.ndarray, request_id: str | None = None,
    backend: str | None = None,
) -> RoutedResult:
    """Resolve, then infer: the gateway's one way in, as the inference service calls it."""
    return await gw.infer(gw.resolve(model, version), x, request_id, backend)


def make(backends: dict[str, FakeBackend], **kw: object) -> tuple[Gateway, GatewayMetrics]:
    metrics = GatewayMetrics(new_registry())
    gw = Gateway(routing(**kw), catalog(), backends, metrics, rng=random.Random(0))  # type: ignore[arg-type]
    return gw, metrics


def sample(metrics: GatewayMetrics, name: str, **labels_: str) -> float:
    return metrics.registry.get_sample_value(name, labels_) or 0.0


async def test_forced_backend_is_used_and_unknown_backend_is_400() -> None:
    fb = fakes()
    gw, _ = make(fb)
    for name in ("onnx", "paddle", "torchserve"):
        res = await infer(gw, "mnist", None, batch(3), "rid", backend=name)
        assert res.backend == name and labels(res.value) == [3]
        assert fb[name].calls == [1]
    with pytest.raises(UnknownBackendError, match="choose from"):
        await infer(gw, "mnist", None, batch(3), backend="tensorflow")
    await gw.close()


async def test_p2c_follows_latency_away_from_a_backend_that_slows_down() -> None:
    fb = fakes()
    fb["onnx"].delay, fb["paddle"].delay, fb["torchserve"].delay = 0.001, 0.05, 0.05
    gw, _ = make(fb, strategy="p2c", batching=False)
    for _ in range(40):
        await infer(gw, "mnist", None, batch(1))
    assert len(fb["onnx"].calls) >= 36  # each of the others is tried once (unmeasured), then lost
    fb["onnx"].delay = 0.5  # onnx gets 500x slower
    before = {n: len(b.calls) for n, b in fb.items()}
    for _ in range(20):
        await infer(gw, "mnist", None, batch(1))
    moved = sum(len(fb[n].calls) - before[n] for n in ("paddle", "torchserve"))
    assert moved >= 15, {n: len(b.calls) - before[n] for n, b in fb.items()}
    await gw.close()


async def test_p2c_spreads_concurrent_requests_by_requests_in_flight() -> None:
    fb = fakes(delay=0.02)
    gw, _ = make(fb, strategy="p2c", batching=False)
    for _ in range(6):  # every backend measured: equal latencies
        await infer(gw, "mnist", None, batch(1))
    before = {n: len(b.calls) for n, b in fb.items()}
    results = await asyncio.gather(*(infer(gw, "mnist", None, batch(d % 10)) for d in range(30)))
    assert [labels(r.value) for r in results] == [[d % 10] for d in range(30)]
    share = {n: len(b.calls) - before[n] for n, b in fb.items()}
    # not all 30 on the cheapest one: every backend takes some once the others have requests in flight
    # (the warm-up's measured latencies vary with the machine's load, so the exact split is not asserted)
    assert all(count >= 1 for count in share.values()) and max(share.values()) < 30, share
    await gw.close()


async def test_weights_route_traffic_and_zero_weight_is_failover_only() -> None:
    fb = fakes()
    gw, _ = make(fb, weights={"onnx": 3, "paddle": 1, "torchserve": 0}, batching=False)
    for _ in range(400):
        await infer(gw, "mnist", None, batch(1))
    assert len(fb["torchserve"].calls) == 0
    assert 0.65 < len(fb["onnx"].calls) / 400 < 0.85
    # weight 0 still serves when the others fail
    fb["onnx"].fail_with = BackendUnavailableError("down")
    fb["paddle"].fail_with = BackendUnavailableError("down")
    res = await infer(gw, "mnist", None, batch(2))
    assert res.backend == "torchserve" and res.attempts == 3
    await gw.close()


@pytest.mark.parametrize(
    "error",
    [BackendUnavailableError("refused"), BackendError("500 boom"), BackendTimeoutError("slow")],
)
async def test_retry_on_another_backend_after_retryable_error(error: Exception) -> None:
    fb = fakes()
    gw, metrics = make(fb, strategy="round-robin")
    fb["onnx"].fail_with = error
    results = [await infer(gw, "mnist", None, batch(d), f"r{d}") for d in range(10)]
    assert [labels(r.value)[0] for r in results] == list(range(10))
    assert all(r.backend != "onnx" for r in results)
    name = "triserve_gateway_failovers_total"
    failovers = sample(metrics, name, model="mnist", version="1", backend="onnx")
    assert failovers >= 1
    await gw.close()


async def test_client_error_from_backend_is_not_retried() -> None:
    fb = fakes()
    gw, _ = make(fb, strategy="round-robin")
    for f in fb.values():
        f.fail_with = BackendRejectedError("bad tensor", status_code=400)
    with pytest.raises(BackendRejectedError) as info:
        await infer(gw, "mnist", None, batch(1))
    assert info.value.status_code == 400
    assert sum(len(f.calls) for f in fb.values()) == 1
    await gw.close()


async def test_all_backends_failing_returns_last_status_and_none_healthy_503() -> None:
    fb = fakes()
    gw, _ = make(fb)
    for f in fb.values():
        f.fail_with = BackendTimeoutError("too slow")
    with pytest.raises(BackendTimeoutError, match="tried backends") as info:
        await infer(gw, "mnist", None, batch(1))
    assert info.value.status_code == 504
    for f in fb.values():
        f.healthy = False
    await gw.check_health()
    assert not gw.ready()
    with pytest.raises(ModelNotReadyError, match="no healthy backend") as info2:
        await infer(gw, "mnist", None, batch(1))
    assert info2.value.status_code == 503
    await gw.close()


async def test_breaker_ejects_then_half_open_probe_readmits() -> None:
    fb = fakes()
    gw, metrics = make(fb, strategy="round-robin", weights={"onnx": 1, "paddle": 1})
    fb["onnx"].fail_with = BackendUnavailableError("refused")
    for _ in range(6):
        await infer(gw, "mnist", None, batch(1))
    onnx_calls = len(fb["onnx"].calls)
    assert onnx_calls == 2  # failure_threshold=2, then ejected
    assert sample(metrics, "triserve_gateway_backend_up", backend="onnx") == 0.0
    for _ in range(4):
        await infer(gw, "mnist", None, batch(1))
    assert len(fb["onnx"].calls) == onnx_calls  # still ejected
    fb["onnx"].fail_with = None
    await eventually(gw.backends["onnx"].breaker.available, "open_s=0.2 passes: half-open probe due")
    served = [(await infer(gw, "mnist", None, batch(1))).backend for _ in range(6)]
    assert "onnx" in served
    assert gw.backends["onnx"].health_label() == "healthy"
    assert sample(metrics, "triserve_gateway_backend_up", backend="onnx") == 1.0
    await gw.close()


async def test_active_health_check_removes_and_readds_backend() -> None:
    fb = fakes()
    gw, metrics = make(fb, strategy="round-robin")
    await gw.start()
    fb["paddle"].healthy = False
    await eventually(lambda: not gw.backends["paddle"].healthy, "a health check sees paddle down")
    assert sample(metrics, "triserve_gateway_backend_up", backend="paddle") == 0.0
    for _ in range(9):
        assert (await infer(gw, "mnist", None, batch(1))).backend != "paddle"
    with pytest.raises(ModelNotReadyError):
        await infer(gw, "mnist", None, batch(1), backend="paddle")
    fb["paddle"].healthy = True
    await eventually(lambda: gw.backends["paddle"].healthy, "a health check sees paddle back")
    used = {(await infer(gw, "mnist", None, batch(1))).backend for _ in range(9)}
    assert "paddle" in used
    await gw.close()
    assert all(f.closed for f in fb.values())


async def test_concurrent_requests_are_batched_per_backend_with_own_answers() -> None:
    fb = fakes(delay=0.01)
    gw, metrics = make(fb, weights={"onnx": 1}, max_batch_size=16, max_queue_delay_ms=20,
                       max_concurrent_batches=1)
    digits = [i % 10 for i in range(64)]
    calls_ = (infer(gw, "mnist", None, batch(d), f"id{i}") for i, d in enumerate(digits))
    results = await asyncio.gather(*calls_)
    assert [labels(r.value)[0] for r in results] == digits
    calls = fb["onnx"].calls
    assert sum(calls) == 64 and len(calls) < 64 and max(calls) <= 16
    # the ids of the batch's requests travel with it
    assert any(rid and "," in rid for rid in fb["onnx"].request_ids)
    count = sample(metrics, "triserve_gateway_batch_size_count", model="mnist", version="1", backend="onnx")
    assert count == len(calls)
    await gw.close()


async def test_batching_off_sends_each_request_alone() -> None:
    fb = fakes(delay=0.005)
    gw, _ = make(fb, weights={"onnx": 1}, batching=False)
    await asyncio.gather(*(infer(gw, "mnist", None, batch(1)) for _ in range(20)))
    assert fb["onnx"].calls == [1] * 20
    await gw.close()


async def test_failed_batch_fails_over_each_request() -> None:
    fb = fakes(delay=0.01)
    gw, _ = make(fb, weights={"onnx": 1, "paddle": 0}, max_concurrent_batches=1, max_queue_delay_ms=20)
    fb["onnx"].fail_with = BackendError("500")
    fb["onnx"].fail_times = 1
    results = await asyncio.gather(*(infer(gw, "mnist", None, batch(i % 10)) for i in range(20)))
    assert [labels(r.value)[0] for r in results] == [i % 10 for i in range(20)]
    assert {r.backend for r in results} <= {"onnx", "paddle"}
    assert len(fb["paddle"].calls) >= 1
    await gw.close()


async def test_version_and_shape_checks() -> None:
    fb = fakes()
    gw, _ = make(fb)
    with pytest.raises(ModelNotFoundError):
        await infer(gw, "mnist", "7", batch(1))
    with pytest.raises(ModelNotFoundError):
        await infer(gw, "cifar", None, batch(1))
    from triserve_common.errors import BadRequestError

    with pytest.raises(BadRequestError, match="FP32"):
        await infer(gw, "mnist", None, np.zeros((1, 28, 28), np.float32))
    res = await infer(gw, "mnist", "1", batch(4), backend="onnx")
    assert res.model_version == "1" and fb["onnx"].versions == ["1"]
    await gw.close()


def test_each_process_takes_its_share_of_the_concurrent_batches() -> None:
    assert [batch_share(2, n) for n in (1, 2, 3, 4)] == [2, 1, 1, 1]
    assert [batch_share(4, n) for n in (1, 2, 3, 8)] == [4, 2, 2, 1]
    assert batch_share(1, 0) == 1


@pytest.mark.parametrize(("processes", "in_flight"), [(1, 2), (2, 1)])
async def test_a_process_sends_its_share_of_concurrent_batches(processes: int, in_flight: int) -> None:
    """max_concurrent_batches counts for the whole gateway: one of two processes keeps 1 of 2 in flight."""
    fb = fakes()
    gate = fb["onnx"].gate = asyncio.Event()
    metrics = GatewayMetrics(new_registry())
    cfg = routing(max_concurrent_batches=2, max_queue_delay_ms=10_000)  # only the concurrency rule sends
    gw = Gateway(cfg, catalog(), fb, metrics, processes=processes)  # type: ignore[arg-type]
    tasks = [asyncio.ensure_future(infer(gw, "mnist", None, batch(d), backend="onnx")) for d in range(6)]
    await eventually(lambda: len(fb["onnx"].calls) >= in_flight, f"{in_flight} batch(es) sent")
    await asyncio.sleep(0.05)  # the rest stay queued: no further batch goes out while the gate is shut
    assert len(fb["onnx"].calls) == in_flight
    gate.set()
    results = await asyncio.gather(*tasks)
    assert [labels(r.value) for r in results] == [[d] for d in range(6)]
    assert sum(fb["onnx"].calls) == 6
    await gw.close()
