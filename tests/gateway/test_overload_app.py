"""Overload protection over the HTTP API, in process with fake backends: admission (503 +
Retry-After), the client's deadline (X-Request-Timeout → 504), per-attempt timeouts (fail over
from a slow backend), the retry budget, and load shedding's path matching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.fakes import FakeBackend, digit_png, fake_admins, fakes, routing, write_store
from triserve_gateway.app import create_app
from triserve_gateway.errors import BackendUnavailableError
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.shedding import inference_model


@asynccontextmanager
async def gateway(
    tmp_path: Path, backends: dict[str, FakeBackend], weights: dict[str, float] | None = None, **settings: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    admins = fake_admins()
    app = create_app(
        GatewaySettings(
            model_store=write_store(tmp_path), management_key_file=tmp_path / "mgmt.key", **settings
        ),
        routing=routing(weights=weights), clients=lambda _: backends,  # type: ignore[arg-type,return-value]
        admins=lambda _: admins,  # type: ignore[arg-type,return-value]
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield app, client


def metric(app: FastAPI, name: str, **labels: str) -> float:
    text = generate_latest(app.state.registry).decode()
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == name and set(labels.items()) <= set(s.labels.items())
    )


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_full_model_answers_503_with_retry_after_at_once(tmp_path: Path) -> None:
    async with gateway(tmp_path, fakes(delay=0.5), max_in_flight=1, max_queue=1, retry_after_s=2) as (app, c):
        first = asyncio.create_task(c.put("/predictions/mnist", content=digit_png(3)))
        second = asyncio.create_task(c.put("/predictions/mnist", content=digit_png(4)))
        await until(lambda: metric(app, "triserve_gateway_admission_queue_depth", model="mnist") == 1)
        refused = await c.put("/predictions/mnist", content=digit_png(5))
        v2 = await c.post("/v2/models/mnist/infer", json={"inputs": []})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["type"] == "ServiceUnavailableException"  # TorchServe's shape off /v2
        assert "overloaded" in refused.json()["message"] and refused.json()["code"] == 503
        assert v2.status_code == 503  # shed before its (invalid) body is even parsed
        assert "overloaded" in v2.json()["error"] and v2.headers["retry-after"] == "2"  # OIP's shape
        assert (await first).text == "3" and (await second).text == "4"  # admitted work completes
        assert metric(app, "triserve_gateway_rejections_total", reason="queue_full") == 2
        assert metric(app, "triserve_gateway_admission_in_flight", model="mnist") == 0
        assert (await c.get("/v2/health/live")).status_code == 200


async def test_client_deadline_header(tmp_path: Path) -> None:
    async with gateway(tmp_path, fakes(delay=2.0)) as (app, c):
        bad = await c.put("/predictions/mnist", content=digit_png(1), headers={"X-Request-Timeout": "soon"})
        assert bad.status_code == 400 and "X-Request-Timeout" in bad.json()["message"]
        late = await c.put("/predictions/mnist", content=digit_png(1), headers={"X-Request-Timeout": "50"})
        assert late.status_code == 504 and "deadline" in late.json()["message"]
        assert metric(app, "triserve_gateway_deadline_expired_total", model="mnist") == 1


async def test_slow_backend_is_cut_at_its_attempt_timeout_and_the_request_fails_over(tmp_path: Path) -> None:
    backends = fakes()
    backends["onnx"].delay = 5.0  # hung, as far as any client is concerned
    weights = {"onnx": 1, "paddle": 0, "torchserve": 0}  # regular traffic to onnx, failover elsewhere
    async with gateway(tmp_path, backends, weights, attempt_timeout_min_ms=20,
                       attempt_timeout_max_ms=50) as (app, c):
        r = await c.put("/predictions/mnist", content=digit_png(6))
        assert r.status_code == 200 and r.text == "6" and r.headers["x-backend"] != "onnx"
        assert metric(app, "triserve_gateway_retries_total", model="mnist") == 1


async def test_retry_budget_caps_failover(tmp_path: Path) -> None:
    backends = fakes()
    for b in backends.values():
        b.fail_with = BackendUnavailableError("down")
    async with gateway(tmp_path, backends, retry_budget_percent=0, retry_budget_min_per_s=0) as (app, c):
        r = await c.put("/predictions/mnist", content=digit_png(2))
        assert r.status_code == 503
        assert sum(len(b.calls) for b in backends.values()) == 1  # no budget: no retry
        assert metric(app, "triserve_gateway_retry_budget_exhausted_total", model="mnist") == 1


def test_shedding_recognises_inference_paths_only() -> None:
    assert inference_model("PUT", "/predictions/mnist") == "mnist"
    assert inference_model("POST", "/predictions/mnist/2") == "mnist"
    assert inference_model("POST", "/v2/models/mnist/infer") == "mnist"
    assert inference_model("POST", "/v2/models/mnist/versions/1/infer") == "mnist"
    assert inference_model("GET", "/predictions/mnist") is None
    assert inference_model("POST", "/v2/models/mnist") is None
    assert inference_model("GET", "/v2/health/live") is None


async def test_when_every_backend_is_slow_hedges_lose_nothing(tmp_path: Path) -> None:
    backends = fakes()
    async with gateway(tmp_path, backends, attempt_timeout_min_ms=10, attempt_timeout_max_ms=150) as (app, c):
        for _ in range(30):  # fast answers: every backend's attempt timeout drops to 10 ms
            assert (await c.put("/predictions/mnist", content=digit_png(1))).status_code == 200
        for b in backends.values():
            b.delay = 0.2  # now all slower than their attempt timeouts (but not hung)
        r = await c.put("/predictions/mnist", content=digit_png(8))
        assert r.status_code == 200 and r.text == "8"  # hedges started, the first answer won
        assert metric(app, "triserve_gateway_retries_total", model="mnist") == 2
        await until(lambda: metric(app, "triserve_gateway_cancelled_total", model="mnist") == 2)
