"""Shadow traffic over in-process fake backends: sampling, holding, bounds, parity, failures."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi import FastAPI
from pydantic import ValidationError

from tests.gateway.fakes import (
    SPEC,
    FakeBackend,
    asgi_client,
    catalog,
    digit_png,
    fakes,
    routing,
    running_app,
    write_store,
)
from tests.support.wait import eventually
from triserve_common.metrics import new_registry
from triserve_common.paths import REPO_ROOT
from triserve_gateway.config import RoutingConfig, ShadowConfig
from triserve_gateway.errors import BackendUnavailableError
from triserve_gateway.gateway import Gateway
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.preprocess import ImagePreprocessor
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.shadow import ShadowTraffic, compare, holding

PRE = ImagePreprocessor(SPEC)


def batch(*digits: int) -> np.ndarray:
    return np.concatenate([PRE(digit_png(d)) for d in digits])


class ShiftedBackend(FakeBackend):
    """A perturbed candidate: every image of digit ``shift_from`` is called ``shift_to``."""

    def __init__(self, name: str, shift_from: int, shift_to: int) -> None:
        super().__init__(name)
        self.shift = (shift_from, shift_to)

    async def infer(self, model: str, version: str | None, x: np.ndarray, request_id: str | None,
                    input_name: str = "input", output_name: str = "logits") -> np.ndarray:
        y = await super().infer(model, version, x, request_id, input_name, output_name)
        rows = y.argmax(axis=1) == self.shift[0]
        y[rows] = 0.0
        y[rows, self.shift[1]] = 10.0
        return y


class GatedBackend(FakeBackend):
    """A slow candidate: answers only once ``gate`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def infer(self, model: str, version: str | None, x: np.ndarray, request_id: str | None,
                    input_name: str = "input", output_name: str = "logits") -> np.ndarray:
        self.waiting += 1
        await self.gate.wait()
        return await super().infer(model, version, x, request_id, input_name, output_name)


def shadow_routing(candidates: list[dict[str, Any]], **limits: Any) -> RoutingConfig:
    """onnx serves every request (paddle/torchserve weight 0); the shadow config as given."""
    cfg = routing(weights={"onnx": 1, "paddle": 0, "torchserve": 0}, batching=False)
    cfg.models["mnist"].shadow = ShadowConfig.model_validate({"candidates": candidates, **limits})
    return RoutingConfig.model_validate(cfg.model_dump())


def make(backends: dict[str, FakeBackend], cfg: RoutingConfig, versions: tuple[str, ...] = ("1",),
         seed: int = 0) -> tuple[Gateway, ShadowTraffic, GatewayMetrics]:
    metrics = GatewayMetrics(new_registry())
    gw = Gateway(cfg, catalog(versions), backends, metrics, rng=random.Random(0))  # type: ignore[arg-type]
    return gw, ShadowTraffic(gw, metrics.shadow, rng=random.Random(seed)), metrics


async def request(gw: Gateway, shadows: ShadowTraffic, x: np.ndarray, rid: str,
                  version: str | None = None) -> np.ndarray:
    """What the inference service does: route, then offer the result for shadowing."""
    target = gw.resolve("mnist", version)
    result = await gw.infer(target, x, rid)
    shadows.offer(target, x, result, rid)
    return result.value


def pair(candidate: str = "paddle", candidate_version: str = "1") -> dict[str, str]:
    return {"model": "mnist", "primary": "onnx", "primary_version": "1", "candidate": candidate,
            "candidate_version": candidate_version}


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def outcomes(metrics: GatewayMetrics, **labels: str) -> dict[str, float]:
    return {o: value(metrics, "triserve_gateway_shadows_total", **labels, outcome=o)
            for o in ("compared", "failed", "dropped")}


# ------------------------------------------------------------------ compare


def test_compare_counts_top1_agreement_and_max_abs_logit_diff() -> None:
    labels = [str(i) for i in range(3)]
    primary = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    candidate = primary.copy()
    candidate[1] = [0.0, 1.0, 1.5]  # top-1 moves from "1" to "2"
    candidate[2, 0] = 0.25
    parity = compare(primary, candidate, labels, labels)
    assert (parity.rows, parity.agreed) == (3, 2)
    assert parity.disagreements == [(1, "1", "2")]
    assert parity.max_abs_diff == pytest.approx(1.0)
    assert compare(primary, primary, labels, labels).max_abs_diff == 0.0
    nan = primary.copy()
    nan[0, 0] = np.nan
    assert compare(primary, nan, labels, labels).max_abs_diff == math.inf
    with pytest.raises(ValueError, match="shape"):
        compare(primary, primary[:, :2], labels, labels)


def test_shadow_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="names a backend, a version, or both"):
        shadow_routing([{"fraction": 0.5}])
    for fraction in (0, 1.5):
        with pytest.raises(ValidationError):
            shadow_routing([{"backend": "paddle", "fraction": fraction}])
    with pytest.raises(ValidationError, match="shadows to undefined backend"):
        shadow_routing([{"backend": "tensorflow", "fraction": 1}])
    with pytest.raises(ValidationError):
        shadow_routing([{"backend": "paddle", "fraction": 1}], max_queue=-1)


def test_the_documented_routing_example_is_valid() -> None:
    text = (REPO_ROOT / "docs" / "shadow.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None, "docs/shadow.md has no yaml example"
    models = yaml.safe_load(block.group(1))["models"]
    cfg = RoutingConfig.model_validate({"backends": routing().model_dump()["backends"], "models": models})
    shadow = cfg.models["mnist"].shadow
    assert shadow is not None and [c.fraction for c in shadow.candidates] == [0.1, 0.05, 1]


# ------------------------------------------------------------------ parity


async def test_faithful_candidate_agrees_on_every_row() -> None:
    fb = fakes()
    gw, shadows, metrics = make(fb, shadow_routing([{"backend": "paddle", "fraction": 1}]))
    for d in range(10):
        await request(gw, shadows, batch(d, (d + 1) % 10), f"rid-{d}")
    await eventually(lambda: outcomes(metrics, **pair())["compared"] == 10, "10 shadows compared")
    assert value(metrics, "triserve_gateway_shadow_compared_rows_total", **pair()) == 20
    assert value(metrics, "triserve_gateway_shadow_agreed_rows_total", **pair()) == 20
    assert value(metrics, "triserve_gateway_shadow_max_logit_diff", **pair()) == 0.0
    assert value(metrics, "triserve_gateway_shadow_logit_diff_count", **pair()) == 10
    assert fb["paddle"].request_ids == [f"rid-{d}" for d in range(10)]
    assert len(fb["onnx"].calls) == 10  # the primary's traffic is untouched
    await shadows.close()
    await gw.close()


async def test_perturbed_candidate_disagrees_and_is_logged_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fb = fakes()
    fb["paddle"] = ShiftedBackend("paddle", shift_from=3, shift_to=8)
    gw, shadows, metrics = make(fb, shadow_routing([{"backend": "paddle", "fraction": 1}]))
    caplog.set_level(logging.WARNING, logger="triserve_gateway.shadow")
    digits = list(range(10))
    for d in digits:
        await request(gw, shadows, batch(d), f"req-{d}")
    await eventually(lambda: outcomes(metrics, **pair())["compared"] == 10, "10 shadows compared")
    agreed = value(metrics, "triserve_gateway_shadow_agreed_rows_total", **pair())
    compared = value(metrics, "triserve_gateway_shadow_compared_rows_total", **pair())
    assert (agreed, compared) == (len([d for d in digits if d != 3]), len(digits))
    assert value(metrics, "triserve_gateway_shadow_max_logit_diff", **pair()) == 10.0
    lines = [r.getMessage() for r in caplog.records if "disagreement" in r.getMessage()]
    assert len(lines) == 1 and "req-3" in lines[0] and "3 vs 8" in lines[0], lines
    await shadows.close()
    await gw.close()


async def test_another_version_is_asked_by_name_and_labelled() -> None:
    fb = fakes()
    cfg = shadow_routing([{"version": "2", "fraction": 1}])
    gw, shadows, metrics = make(fb, cfg, versions=("1", "2"))
    await request(gw, shadows, batch(4), "v", version="1")
    labels = pair(candidate="onnx", candidate_version="2")
    await eventually(lambda: outcomes(metrics, **labels)["compared"] == 1, "version 2 compared")
    assert fb["onnx"].versions == ["1", "2"]  # the primary asked for 1, the shadow for 2
    # a request answered by version 2 itself is not mirrored to version 2
    await request(gw, shadows, batch(4), "v2", version="2")
    assert shadows.pending("mnist") == 0 and fb["onnx"].versions == ["1", "2", "2"]
    await shadows.close()
    await gw.close()


async def test_fraction_samples_requests_with_the_given_rng() -> None:
    fb = fakes()
    cfg = shadow_routing([{"backend": "paddle", "fraction": 0.25}], max_queue=200)
    gw, shadows, metrics = make(fb, cfg, seed=7)
    for i in range(200):
        await request(gw, shadows, batch(1), f"r{i}")
    draws = random.Random(7)
    expected = sum(draws.random() < 0.25 for _ in range(200))
    await eventually(lambda: outcomes(metrics, **pair())["compared"] == expected, f"{expected} compared")
    assert 0 < expected < 200 and len(fb["paddle"].calls) == expected
    await shadows.close()
    await gw.close()


# ------------------------------------------------------------------ never delaying, bounded


async def test_held_shadows_start_only_when_released() -> None:
    fb = fakes()
    gw, shadows, metrics = make(fb, shadow_routing([{"backend": "paddle", "fraction": 1}]))
    with holding() as held:
        await request(gw, shadows, batch(2), "held")
        await asyncio.sleep(0)
        assert len(held) == 1 and fb["paddle"].calls == [] and shadows.pending("mnist") == 0
    shadows.release(held)
    assert held == []
    await eventually(lambda: outcomes(metrics, **pair())["compared"] == 1, "released shadow compared")
    await shadows.close()
    await gw.close()


async def test_under_load_shadows_are_dropped_not_queued_without_bound() -> None:
    fb: dict[str, FakeBackend] = fakes()
    slow = fb["paddle"] = GatedBackend("paddle")
    cfg = shadow_routing([{"backend": "paddle", "fraction": 1}], max_concurrent=2, max_queue=3)
    gw, shadows, metrics = make(fb, cfg)
    answers = [await request(gw, shadows, batch(d % 10), f"load-{d}") for d in range(20)]
    # every primary answered at once, whatever the candidate does
    assert [int(a.argmax()) for a in answers] == [d % 10 for d in range(20)]
    await eventually(lambda: slow.waiting == 2, "two shadows at the candidate")
    assert shadows.pending("mnist") == 5
    assert value(metrics, "triserve_gateway_shadows_pending", model="mnist", candidate="paddle",
                 candidate_version="1") == 5
    assert outcomes(metrics, **pair()) == {"compared": 0, "failed": 0, "dropped": 15}
    slow.gate.set()
    await eventually(lambda: outcomes(metrics, **pair())["compared"] == 5, "queued shadows compared")
    assert shadows.pending("mnist") == 0 and len(slow.calls) == 5
    await shadows.close()
    await gw.close()


async def test_a_slow_candidate_only_costs_its_own_shadows() -> None:
    fb: dict[str, FakeBackend] = fakes()
    slow = fb["torchserve"] = GatedBackend("torchserve")
    cfg = shadow_routing([{"backend": "paddle", "fraction": 1}, {"backend": "torchserve", "fraction": 1}],
                         max_concurrent=1, max_queue=1, timeout_s=60)
    gw, shadows, metrics = make(fb, cfg)
    for i in range(6):
        await request(gw, shadows, batch(i), f"s{i}")
        await eventually(lambda i=i: outcomes(metrics, **pair())["compared"] == i + 1, "paddle keeps up")
    assert outcomes(metrics, **pair("torchserve")) == {"compared": 0, "failed": 0, "dropped": 4}
    assert slow.waiting == 1 and shadows.pending("mnist") == 2
    await shadows.close()
    await gw.close()


async def test_failing_slow_or_unhealthy_candidates_count_and_never_touch_the_breaker() -> None:
    fb: dict[str, FakeBackend] = fakes()
    fb["paddle"].fail_with = BackendUnavailableError("paddle is down")
    slow = fb["torchserve"] = GatedBackend("torchserve")
    cfg = shadow_routing([{"backend": "paddle", "fraction": 1}, {"backend": "torchserve", "fraction": 1}],
                         timeout_s=0.05)
    gw, shadows, metrics = make(fb, cfg)
    for i in range(5):
        await request(gw, shadows, batch(6), f"f{i}")
    await eventually(lambda: outcomes(metrics, **pair())["failed"] == 5, "paddle shadows failed")
    await eventually(lambda: outcomes(metrics, **pair("torchserve"))["failed"] == 5, "slow shadows timed out")
    assert gw.backends["paddle"].breaker.consecutive_failures == 0  # shadows never eject a backend
    failures = "triserve_gateway_backend_failures_total"
    assert value(metrics, failures, backend="paddle", reason="unavailable") == 0
    gw.backends["paddle"].healthy = False
    await request(gw, shadows, batch(6), "unhealthy")
    assert outcomes(metrics, **pair())["dropped"] == 1
    assert slow.waiting == 5
    await shadows.close()
    await gw.close()


async def test_close_drops_waiting_shadows_and_cancels_running_ones() -> None:
    fb: dict[str, FakeBackend] = fakes()
    slow = fb["paddle"] = GatedBackend("paddle")
    cfg = shadow_routing([{"backend": "paddle", "fraction": 1}], max_concurrent=1, max_queue=4)
    gw, shadows, metrics = make(fb, cfg)
    for i in range(3):
        await request(gw, shadows, batch(1), f"c{i}")
    await eventually(lambda: slow.waiting == 1, "one shadow at the candidate")
    await shadows.close()
    assert shadows.pending("mnist") == 0
    assert outcomes(metrics, **pair()) == {"compared": 0, "failed": 0, "dropped": 2}
    await request(gw, shadows, batch(1), "after-close")  # no shadow after close
    assert shadows.pending("mnist") == 0 and slow.waiting == 1
    await gw.close()



# ------------------------------------------------------------------ through the gateway app


@pytest.fixture
async def shadow_app(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, dict[str, FakeBackend]]]:
    backends: dict[str, FakeBackend] = fakes()
    backends["paddle"] = GatedBackend("paddle")
    # (a gateway with a management listener keeps its generated key in tmp_path, never in the checkout)
    settings = GatewaySettings.model_validate(
        {"model_store": write_store(tmp_path), "management_key_file": tmp_path / "management.key"}
    )
    cfg = shadow_routing([{"backend": "paddle", "fraction": 1}])
    async with running_app(settings, backends, cfg) as app:
        yield app, backends


async def test_the_client_has_its_whole_answer_before_the_shadow_starts(
    shadow_app: tuple[FastAPI, dict[str, FakeBackend]],
) -> None:
    app, backends = shadow_app
    slow = backends["paddle"]
    assert isinstance(slow, GatedBackend)
    sent: list[dict[str, Any]] = []
    shadow_calls_at_end: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": digit_png(7), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            shadow_calls_at_end.append(slow.waiting)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT",
             "scheme": "http", "path": "/predictions/mnist", "raw_path": b"/predictions/mnist",
             "query_string": b"", "root_path": "", "headers": [(b"x-request-id", b"shadow-1")],
             "client": ("127.0.0.1", 1), "server": ("gw", 80)}
    await app(scope, receive, send)
    assert sent[0]["status"] == 200 and b"".join(m.get("body", b"") for m in sent[1:]) == b"7"
    assert shadow_calls_at_end == [0]  # nothing was sent to the candidate before the answer was complete
    metrics: GatewayMetrics = app.state.service.metrics
    labels = pair()
    await eventually(lambda: slow.waiting == 1, "the shadow reaches the candidate after the answer")
    # the answer is out and complete while the candidate still holds the shadow
    assert outcomes(metrics, **labels)["compared"] == 0
    async with asgi_client(app) as client:
        for _ in range(2):  # answered while the candidate holds every shadow: the primary's answer
            again = await client.put("/predictions/mnist", content=digit_png(7))
            assert again.content == b"7" and again.headers["x-backend"] == "onnx"
    await eventually(lambda: slow.waiting == 2, "two shadows at the candidate (max_concurrent)")
    assert outcomes(metrics, **labels)["compared"] == 0 and app.state.service.shadows.pending("mnist") == 3
    slow.gate.set()
    await eventually(lambda: outcomes(metrics, **labels)["compared"] == 3, "shadows compared once released")
    assert slow.request_ids[0] == "shadow-1"
    assert value(metrics, "triserve_gateway_shadow_agreed_rows_total", **labels) == 3
