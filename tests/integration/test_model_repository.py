"""Every model and version of the store, served by every runtime that can run it, through the real
gateway (TorchServe, the ONNX and Paddle services and the gateway as ``make up`` starts them, on free
ports, start set ``all``).

The matrix: ``mnist`` 1 (FP32), ``mnist`` 2 (INT8: ONNX Runtime QDQ and torch.ao; its manifest lists
no Paddle) and ``fashion`` 1 (label names), each through every backend that serves it (forced with
``X-Backend``) and through default routing, by both APIs: TorchServe-style ``PUT`` of a PNG and OIP v2
``infer`` with BYTES (JSON, base64) and FP32 (binary tensors). Images are held-out test images cut at
test time by the project's data lookup; per class the most typical one the version's own ONNX model
classifies right (the model's accuracy is the trainer's business, routing is this test's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.encode import v2_images, v2_request
from tests.support.mnist import Digits, model_held_out, typical_per_class
from tests.support.procs import ServiceProcess
from tests.support.stack import free_port_config, service_processes, start_platform, wait_torchserve_all
from triserve_common import codec
from triserve_common.manifest import Manifest, read_manifest

pytestmark = pytest.mark.integration

BACKENDS = ("onnx", "paddle", "torchserve")
VERSIONS = (("mnist", "1"), ("mnist", "2"), ("fashion", "1"))
KEY = "model-repository-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Platform:
    gateway: str
    management: str
    metrics: str
    urls: dict[str, str]
    procs: dict[str, ServiceProcess]

    def put(self, path: str, body: bytes, backend: str | None = None) -> httpx.Response:
        headers = {"X-Backend": backend} if backend else {}
        return httpx.put(f"{self.gateway}{path}", content=body, headers=headers, timeout=60)

    def post(self, path: str, backend: str | None = None, **kw: Any) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **({"X-Backend": backend} if backend else {})}
        return httpx.post(f"{self.gateway}{path}", headers=headers, timeout=60, **kw)


@dataclass(frozen=True)
class Served:
    """One model version, its manifest, the backends that serve it and its test images."""

    name: str
    version: str
    manifest: Manifest
    images: Digits

    @property
    def backends(self) -> list[str]:
        return [b for b in BACKENDS if self.manifest.serves_on(b)]

    @property
    def names(self) -> list[str]:
        """Expected label of each test image."""
        return [self.manifest.labels[int(c)] for c in self.images.labels]


def right_per_class(model_store: Path, name: str, version: str) -> Served:
    """Per class, the most typical held-out image that the version's ONNX model classifies right."""
    manifest = read_manifest(model_store / name / version)
    held = model_held_out(model_store, name, version)
    session = ort.InferenceSession(str(model_store / name / version / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    predicted = np.concatenate([
        session.run(None, {"input": held.x[i:i + 1000]})[0].argmax(axis=1) for i in range(0, len(held), 1000)
    ])
    right = held[list(np.flatnonzero(predicted == held.labels))]
    chosen = typical_per_class(right)
    assert list(chosen.labels) == list(range(len(manifest.labels)))  # every class has one
    return Served(name, version, manifest, chosen)


@pytest.fixture(scope="module")
def versions(model_store: Path) -> dict[tuple[str, str], Served]:
    return {(n, v): right_per_class(model_store, n, v) for n, v in VERSIONS}


@pytest.fixture(scope="module")
def platform(
    service_logs: Path, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    config = free_port_config(tmp_path_factory.mktemp("repo-run"), model_store, models="all")
    gateway_env = {
        "TRISERVE_GATEWAY_STRATEGY": "round-robin",  # default routing reaches every backend holding a version
        "TRISERVE_GATEWAY_HEALTH_INTERVAL_S": "0.5",
        "TRISERVE_GATEWAY_MANAGEMENT_KEY": KEY,
    }
    procs = service_processes(config, service_logs, extra_env={"gateway": gateway_env}, timeout=240)
    try:
        held: list[tuple[str, str]] = []
        start_platform(config, procs, lambda url, ts: held.extend(wait_torchserve_all(url, ts)))
        assert held == sorted(VERSIONS)  # TorchServe registered every .mar of the store
        urls = {"onnx": config.url(config.onnx_port), "paddle": config.url(config.paddle_port),
                "torchserve": config.url(config.ts_inference_port)}
        yield Platform(config.url(config.gateway_port), config.url(config.management_port),
                       config.url(config.metrics_port), urls, procs)
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()


def label_answer(label: str) -> Any:
    """A label as the TorchServe-style API answers it: digits as numbers, names as JSON strings."""
    return int(label) if label.isdigit() else label


def check_predictions(p: Platform, s: Served, backend: str | None) -> set[str]:
    """TorchServe style: ``PUT /predictions/{m}/{v}`` with each PNG; returns the backends that answered."""
    seen = set()
    for png, name in zip(s.images.pngs, s.names, strict=True):
        r = p.put(f"/predictions/{s.name}/{s.version}", png, backend)
        assert r.status_code == 200, (s.name, s.version, backend, r.text)
        assert r.json() == label_answer(name), (s.name, s.version, backend, name)
        assert r.headers["x-model-version"] == s.version
        seen.add(r.headers["x-backend"])
    return seen


def check_v2(p: Platform, s: Served, backend: str | None) -> set[str]:
    """OIP v2: BYTES images as JSON (label names back) and FP32 binary tensors (logits back)."""
    path = f"/v2/models/{s.name}/versions/{s.version}/infer"
    r = p.post(path, backend, json=v2_request(v2_images("image", s.images.pngs), outputs=["label", "logits"]))
    assert r.status_code == 200, (s.name, s.version, backend, r.text)
    body = r.json()
    assert body["model_name"] == s.name and body["model_version"] == s.version
    outs = {o["name"]: o for o in body["outputs"]}
    assert outs["label"]["data"] == s.names
    seen = {r.headers["x-backend"]}
    content, headers = codec.encode_request({"input": s.images.x}, outputs=["logits"], binary=True)
    r = p.post(path, backend, content=content, headers=headers)
    assert r.status_code == 200, (s.name, s.version, backend, r.text)
    length = r.headers.get(codec.HEADER_LENGTH)
    logits = codec.decode_response(r.content, int(length) if length else None).outputs["logits"]
    assert list(logits.argmax(axis=1)) == list(s.images.labels)
    from_bytes = np.asarray(outs["logits"]["data"], dtype=np.float32).reshape(logits.shape)
    # the gateway's preprocessing (a lookup table) = the reference's float arithmetic up to rounding,
    # which an INT8 model may turn into a quantisation step of its logits
    int8 = "int8" in s.manifest.artifacts["onnx"].format
    np.testing.assert_allclose(from_bytes, logits, atol=1.0 if int8 else 1e-3)
    seen.add(r.headers["x-backend"])
    return seen


@pytest.mark.parametrize(("name", "version"), VERSIONS, ids=[f"{n}-{v}" for n, v in VERSIONS])
def test_every_version_through_each_backend_forced_and_default_routing(
    platform: Platform, versions: dict[tuple[str, str], Served], name: str, version: str
) -> None:
    s = versions[(name, version)]
    assert s.backends == (["onnx", "torchserve"] if (name, version) == ("mnist", "2") else list(BACKENDS))
    for backend in s.backends:
        assert check_predictions(platform, s, backend) == {backend}
        assert check_v2(platform, s, backend) == {backend}
    seen = check_predictions(platform, s, None) | check_v2(platform, s, None)
    seen |= check_predictions(platform, s, None)
    assert seen and seen <= set(s.backends)  # default routing reached only backends holding it


def test_ankle_boot_by_name(platform: Platform, versions: dict[tuple[str, str], Served]) -> None:
    """``curl -T shoe.png /predictions/fashion`` answers the label name, on every backend."""
    fashion = versions[("fashion", "1")]
    boot = fashion.images.pngs[fashion.names.index("Ankle boot")]
    for backend in (*BACKENDS, None):
        r = platform.put("/predictions/fashion", boot, backend)
        assert r.status_code == 200 and r.json() == "Ankle boot" and r.text == '"Ankle boot"', r.text
    top = platform.put("/predictions/fashion?topk=3", boot).json()
    assert next(iter(top)) == "Ankle boot" and len(top) == 3


def test_defaults_unknowns_and_metadata(platform: Platform, versions: dict[tuple[str, str], Served]) -> None:
    mnist, fashion = versions[("mnist", "1")], versions[("fashion", "1")]
    # routing.yaml sets mnist's default_version to 1 (INT8 is opt-in); fashion has one version
    for s in (mnist, fashion):
        r = platform.put(f"/predictions/{s.name}", s.images.pngs[3])
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert r.json() == label_answer(s.names[3])
    r = platform.put("/predictions/mnist/3", mnist.images.pngs[0])
    assert r.status_code == 404 and "versions: 1, 2" in r.json()["message"], r.text
    one = v2_request(v2_images("i", mnist.images.pngs[:1]))
    r = platform.post("/v2/models/mnist/versions/9/infer", json=one)
    assert r.status_code == 404 and "versions: 1, 2" in r.json()["error"], r.text
    r = platform.put("/predictions/cifar10", mnist.images.pngs[0])
    assert r.status_code == 404 and "fashion, mnist" in r.json()["message"], r.text
    meta = httpx.get(f"{platform.gateway}/v2/models/mnist/versions/2", timeout=30).json()
    assert meta["versions"] == ["1", "2"] and meta["parameters"]["backends"] == ["onnx", "torchserve"]
    meta = httpx.get(f"{platform.gateway}/v2/models/fashion", timeout=30).json()
    assert meta["parameters"]["labels"][9] == "Ankle boot"
    assert meta["parameters"]["backends"] == list(BACKENDS)
    assert meta["parameters"]["preprocessing"] == fashion.manifest.preprocessing.model_dump()
    listed = httpx.get(f"{platform.gateway}/demo/models", timeout=30).json()["models"]
    demo = {m["modelName"]: m for m in listed}
    assert demo["mnist"]["versions"] == ["1", "2"] and demo["mnist"]["modelVersion"] == "1"
    assert demo["fashion"]["versions"] == ["1"]


def breaker(platform: Platform, name: str, version: str, backend: str) -> dict[str, Any]:
    r = httpx.get(f"{platform.management}/models/{name}/{version}", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    entry = r.json()[0]
    return cast(dict[str, Any], {b["name"]: b for b in entry["triserve"]["backends"]}[backend])


def test_a_version_a_backend_lacks_is_never_routed_there(
    platform: Platform, versions: dict[tuple[str, str], Served]
) -> None:
    int8 = versions[("mnist", "2")]
    png = int8.images.pngs[7]
    for _ in range(3):  # forcing Paddle for the INT8 version: a 400 naming why, every time, no breaker trip
        r = platform.put("/predictions/mnist/2", png, "paddle")
        assert r.status_code == 400, r.text
        error = r.json()["message"]
        assert "backend 'paddle' does not serve model 'mnist' version 2" in error
        assert "lists backends onnx, torchserve" in error and "choose from: onnx, torchserve" in error
        r = platform.post("/v2/models/mnist/versions/2/infer", "paddle",
                          json=v2_request(v2_images("image", [png])))
        assert r.status_code == 400 and "lists backends onnx, torchserve" in r.json()["error"], r.text
    paddle = breaker(platform, "mnist", "1", "paddle")
    assert paddle["circuit"] == "closed" and paddle["health"] == "healthy"
    assert platform.put("/predictions/mnist/1", png, "paddle").json() == 7  # Paddle still serves v1
    for _ in range(12):
        r = platform.put("/predictions/mnist/2", png)
        assert r.status_code == 200 and r.headers["x-backend"] != "paddle" and r.json() == 7
    # Paddle itself never saw a request for version 2 (its own metrics), nor loaded it
    text = httpx.get(f"{platform.urls['paddle']}/metrics", timeout=30).text
    versions_seen = {
        (s.labels["model"], s.labels["version"])
        for f in text_string_to_metric_families(text) if f.name == "triserve_inference_requests"
        for s in f.samples if s.name.endswith("_total")
    }
    assert ("mnist", "1") in versions_seen and ("mnist", "2") not in versions_seen
    index = httpx.post(f"{platform.urls['paddle']}/v2/repository/index", json={}, timeout=30).json()
    assert {(row["name"], row["version"]) for row in index} == {("mnist", "1"), ("fashion", "1")}


def test_catalog_follows_the_backends_reports(platform: Platform) -> None:
    """Each version's description shows where it is held, from the backends' own reports."""
    for name, version in VERSIONS:
        r = httpx.get(f"{platform.management}/models/{name}/{version}", headers=AUTH, timeout=30)
        by_backend = {b["name"]: b["state"] for b in r.json()[0]["triserve"]["backends"]}
        expected = ["onnx", "torchserve"] if (name, version) == ("mnist", "2") else list(BACKENDS)
        assert sorted(b for b, state in by_backend.items() if state == "READY") == expected, by_backend


def test_metrics_by_model_and_version(platform: Platform, versions: dict[tuple[str, str], Served]) -> None:
    platform.put("/predictions/fashion/1", versions[("fashion", "1")].images.pngs[0])
    platform.put("/predictions/mnist/2", versions[("mnist", "2")].images.pngs[0])
    platform.put("/predictions/mnist/77", versions[("mnist", "2")].images.pngs[0])
    text = httpx.get(f"{platform.metrics}/metrics", timeout=30).text
    seen = {
        (s.labels["model"], s.labels["version"], s.labels["status"])
        for f in text_string_to_metric_families(text) if f.name == "triserve_gateway_requests"
        for s in f.samples if s.name.endswith("_total")
    }
    assert {("fashion", "1", "200"), ("mnist", "2", "200"), ("mnist", "_unknown", "404")} <= seen
    assert all(v in ("1", "2", "_unknown") for _, v, _ in seen)
