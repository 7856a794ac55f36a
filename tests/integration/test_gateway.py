"""The gateway in front of the three REAL backends (ONNX service, Paddle service, TorchServe).

Every service runs as its own process on free 127.0.0.1 ports; digits are cut from the MNIST t10k
files at test time and sent as PNGs the way ``curl -T 0.png`` sends them (PUT, raw body).
One stack per module (TorchServe's JVM start is the slow part).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.support import encode
from tests.support.encode import bytes_items, v2_images, v2_input, v2_request
from tests.support.mnist import Digits, one_per_digit
from tests.support.procs import ServiceProcess
from tests.support.stack import free_port_config, service_processes, start_platform
from triserve_common import codec
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration

BACKENDS = ("onnx", "paddle", "torchserve")
MANAGEMENT_KEY = "integration-test-key"
MANAGEMENT_AUTH = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
MAX_BODY = 1 << 20
MAX_PIXELS = 1_000_000


@dataclass
class Stack:
    gateway: str
    procs: dict[str, ServiceProcess]
    urls: dict[str, str]
    ts_management: str
    management: str
    metrics: str

    def describe(self) -> dict[str, Any]:
        """The gateway's management-API description of mnist (backend URLs, health, workers)."""
        r = httpx.get(f"{self.management}/models/mnist", headers=MANAGEMENT_AUTH, timeout=30)
        assert r.status_code == 200, r.text
        return cast(dict[str, Any], r.json()[0])

    def put(self, body: bytes, path: str = "/predictions/mnist", **headers: str) -> httpx.Response:
        # curl -T file: PUT with the file as the raw body
        return httpx.put(f"{self.gateway}{path}", content=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, model_store: Path) -> Digits:
    """The most typical held-out t10k image of each digit 0..9 (PNGs, labels, raw uint8 images)."""
    return one_per_digit(mnist_dir, read_manifest(model_store / "mnist" / "1"))


@pytest.fixture(scope="module")
def stack(service_logs: Path, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = free_port_config(tmp_path_factory.mktemp("gw-run"), model_store, models="mnist:1")
    procs = service_processes(
        config,
        service_logs,
        extra_env={
            "gateway": {
                "TRISERVE_GATEWAY_STRATEGY": "round-robin",  # automatic routing reaches every backend
                "TRISERVE_GATEWAY_HEALTH_INTERVAL_S": "0.5",
                "TRISERVE_GATEWAY_CIRCUIT_OPEN_S": "1",
                "TRISERVE_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
                "TRISERVE_GATEWAY_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
                "TRISERVE_GATEWAY_MANAGEMENT_KEY": MANAGEMENT_KEY,
            }
        },
    )
    ts_management = config.url(config.ts_management_port)
    try:
        start_platform(config, procs)  # TorchServe first (slowest), Python backends meanwhile, gateway last
        urls = {
            "onnx": config.url(config.onnx_port),
            "paddle": config.url(config.paddle_port),
            "torchserve": config.url(config.ts_inference_port),
        }
        yield Stack(config.url(config.gateway_port), procs, urls, ts_management,
                    config.url(config.management_port), config.url(config.metrics_port))
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()


def test_every_digit_with_each_backend_forced(stack: Stack, digits: Digits) -> None:
    pngs, labels = digits.pngs, digits.labels
    for backend in BACKENDS:
        for png, label in zip(pngs, labels, strict=True):
            r = stack.put(png, **{"X-Backend": backend})
            assert r.status_code == 200, r.text
            assert r.content == str(label).encode()  # byte-compatible with TorchServe's MNIST example
            assert r.headers["x-backend"] == backend
            assert r.headers["x-model-version"] == "1"
            assert "backend;dur=" in r.headers["server-timing"]
        # the query parameter works the same way
        r = stack.put(pngs[7], path=f"/predictions/mnist?backend={backend}")
        assert r.headers["x-backend"] == backend and r.text == str(labels[7])


def test_every_digit_with_automatic_routing(stack: Stack, digits: Digits) -> None:
    pngs, labels = digits.pngs, digits.labels
    seen = set()
    for _ in range(2):
        for png, label in zip(pngs, labels, strict=True):
            r = stack.put(png, **{"X-Request-Id": f"auto-{label}"})
            assert r.status_code == 200 and r.text == str(label)
            assert r.headers["x-request-id"] == f"auto-{label}"
            seen.add(r.headers["x-backend"])
    assert seen == set(BACKENDS)


def test_multipart_topk_and_versioned_path(stack: Stack, digits: Digits) -> None:
    pngs, labels = digits.pngs, digits.labels
    files = [("data", (f"{i}.png", pngs[i], "image/png")) for i in (2, 9)]
    r = httpx.post(f"{stack.gateway}/predictions/mnist", files=files, timeout=30)
    assert r.status_code == 200 and r.json() == [int(labels[2]), int(labels[9])]
    r = stack.put(pngs[4], path="/predictions/mnist/1?topk=3")
    top = r.json()
    assert len(top) == 3 and next(iter(top)) == str(labels[4]) and top[str(labels[4])] > 0.5


def _v2(stack: Stack, body: bytes, headers: dict[str, str]) -> tuple[httpx.Response, np.ndarray]:
    r = httpx.post(f"{stack.gateway}/v2/models/mnist/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    length = r.headers.get(codec.HEADER_LENGTH)
    out = codec.decode_response(r.content, int(length) if length else None)
    return r, out.outputs["logits"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_v2_bytes_and_fp32_agree(
    stack: Stack, digits: Digits, backend: str
) -> None:
    pngs, labels = digits.pngs, digits.labels
    body, headers = codec.encode_request({"image": bytes_items(pngs)}, outputs=["logits"])
    r, from_bytes = _v2(stack, body, {**headers, "X-Backend": backend})
    assert r.headers["x-backend"] == backend
    body, headers = codec.encode_request({"input": digits.x}, outputs=["logits"])
    _, from_fp32 = _v2(stack, body, {**headers, "X-Backend": backend})
    np.testing.assert_allclose(from_bytes, from_fp32, atol=1e-4)
    assert list(from_bytes.argmax(axis=1)) == list(labels)
    # JSON with base64 BYTES
    payload = v2_request(v2_images("image", pngs), outputs=["logits", "label"])
    r = httpx.post(f"{stack.gateway}/v2/models/mnist/infer", json=payload, headers={"X-Backend": backend},
                   timeout=30)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["label"]["data"] == [str(v) for v in labels]
    np.testing.assert_allclose(np.asarray(outs["logits"]["data"]).reshape(10, 10), from_fp32, atol=1e-4)


def test_error_cases_return_their_codes(stack: Stack, digits: Digits) -> None:
    pngs = digits.pngs
    cases = [
        (stack.put(b"definitely not an image"), 415, "not an image"),
        (stack.put(pngs[0][: len(pngs[0]) // 2]), 422, "could not be decoded"),
        (stack.put(b"\0" * (MAX_BODY + 1)), 413, "exceeds"),
        (stack.put(encode.png(Image.new("L", (2000, 2000)))), 413, "pixels"),
        (stack.put(pngs[0], path="/predictions/cifar10"), 404, "cifar10"),
        (stack.put(pngs[0], path="/predictions/mnist/7"), 404, "version"),
        (stack.put(pngs[0], **{"X-Backend": "triton"}), 400, "triton"),
        (stack.put(pngs[0], path="/predictions/mnist?topk=0"), 400, "topk"),
    ]
    bad_shape = v2_request(v2_input("input", [1, 783], fill=0.0))
    cases.append((httpx.post(f"{stack.gateway}/v2/models/mnist/infer", json=bad_shape), 400, "rows"))
    for resp, status, needle in cases:
        assert resp.status_code == status, (status, resp.text)
        body = resp.json()
        assert needle in (body["error"] if "/v2/" in str(resp.url) else body["message"])


def test_describe_models_and_health(stack: Stack) -> None:
    assert httpx.get(f"{stack.gateway}/ping").json() == {"status": "Healthy"}
    desc = stack.describe()
    assert desc["modelName"] == "mnist" and desc["modelVersion"] == "1" and desc["loadedAtStartup"] is True
    by_name = {b["name"]: b for b in desc["triserve"]["backends"]}
    assert set(by_name) == set(BACKENDS)
    for name, info in by_name.items():
        assert info["url"] == stack.urls[name]
        assert info["health"] == "healthy" and info["state"] == "READY"
        assert info["held"] and info["workers"] >= 1
    assert len(desc["workers"]) >= len(BACKENDS)
    assert httpx.get(f"{stack.gateway}/v2/models/mnist/ready").json()["ready"] is True
    # internals are on the management port only, behind its key
    assert httpx.get(f"{stack.gateway}/models/mnist").status_code == 404
    assert httpx.get(f"{stack.management}/models/mnist").status_code == 401


def test_failover_when_a_backend_stops_and_rejoin_after_restart(
    stack: Stack, digits: Digits
) -> None:
    pngs, labels = digits.pngs, digits.labels
    results: list[tuple[int, str, int, str]] = []
    stop_at = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            for j in range(45):
                d = (worker + j) % 10
                r = http.put(f"{stack.gateway}/predictions/mnist", content=pngs[d])
                results.append((r.status_code, r.text, int(labels[d]), r.headers.get("x-backend", "")))
                if worker == 0 and j == 8:
                    stop_at.set()

    onnx = stack.procs["onnx"]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, w) for w in range(4)]
        assert stop_at.wait(60)
        onnx.stop()  # mid-traffic
        for f in futures:
            f.result()
    assert len(results) == 180
    failed = [(s, t, want) for s, t, want, _ in results if s != 200 or t != str(want)]
    assert not failed, failed[:5]
    assert {b for *_, b in results} >= {"paddle", "torchserve"}

    # while it is down: forcing it answers 503, automatic routing avoids it
    r = stack.put(pngs[1], **{"X-Backend": "onnx"})
    assert r.status_code == 503 and "onnx" in r.json()["message"]
    assert stack.put(pngs[1]).status_code == 200

    onnx.start()  # same port: the gateway must take it back
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = stack.put(pngs[5], **{"X-Backend": "onnx"})
        if r.status_code == 200:
            break
        time.sleep(0.25)
    assert r.status_code == 200 and r.text == str(labels[5]), r.text
    auto = {stack.put(pngs[3]).headers["x-backend"] for _ in range(9)}
    assert "onnx" in auto
    desc = stack.describe()
    assert {b["name"]: b["health"] for b in desc["triserve"]["backends"]}["onnx"] == "healthy"


def test_metrics_show_traffic_by_backend(stack: Stack, digits: Digits) -> None:
    for backend in BACKENDS:
        assert stack.put(digits.pngs[0], **{"X-Backend": backend}).status_code == 200
    assert stack.put(b"junk").status_code == 415
    assert httpx.get(f"{stack.gateway}/metrics").status_code == 404  # metrics have their own port
    text = httpx.get(f"{stack.metrics}/metrics").text
    ok: dict[str, float] = {}
    statuses: set[str] = set()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            if s.name == "triserve_gateway_requests_total":
                statuses.add(s.labels["status"])
                if s.labels["status"] == "200":
                    ok[s.labels["backend"]] = s.value
    assert set(BACKENDS) <= set(ok) and all(ok[b] > 0 for b in BACKENDS)
    assert {"200", "415"} <= statuses
    for name in ("triserve_gateway_request_duration_seconds", "triserve_gateway_stage_duration_seconds",
                 "triserve_gateway_requests_in_flight", "triserve_gateway_batch_size",
                 "triserve_gateway_backend_up", "triserve_gateway_backend_failures",
                 "triserve_gateway_failovers"):
        assert name in names, name
