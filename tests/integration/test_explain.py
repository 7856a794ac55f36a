"""Explanations end to end: the gateway's ``/explanations`` and ``/v2/.../explain`` in front of the
REAL TorchServe running the packaged handler (Captum Integrated Gradients), plus TorchServe's own
``/explanations`` answered by the same handler. One stack for the module, on free ports.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.encode import png
from tests.support.mnist import Digits, one_per_digit
from tests.support.procs import ServiceProcess
from tests.support.stack import free_port_config, service_processes, start_platform
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    gateway: str
    torchserve: str
    procs: dict[str, ServiceProcess]


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, model_store: Path) -> Digits:
    return one_per_digit(mnist_dir, read_manifest(model_store / "mnist" / "1"))


@pytest.fixture(scope="module")
def stack(service_logs: Path, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = free_port_config(tmp_path_factory.mktemp("explain-run"), model_store)
    procs = service_processes(config, service_logs)
    try:
        start_platform(config, procs)
        yield Stack(config.url(config.gateway_port), config.url(config.ts_inference_port), procs)
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()


def test_gateway_explains_with_integrated_gradients(stack: Stack, digits: Digits) -> None:
    for d in (0, 7):
        r = httpx.put(f"{stack.gateway}/explanations/mnist?steps=16", content=digits.pngs[d], timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["backend"] == "torchserve" and body["steps"] == 16 and body["model_version"] == "1"
        [e] = body["explanations"]
        assert e["label"] == str(d) and e["probability"] > 0.5
        attr = np.asarray(e["attributions"])
        assert attr.shape == (1, 28, 28)
        ink = digits.images[d] > 0
        # Integrated Gradients from a black baseline: nothing on background pixels, something on the ink
        assert np.abs(attr[0][~ink]).max() < 1e-6 * np.abs(attr[0][ink]).max()
        assert r.headers["x-backend"] == "torchserve" and "backend;dur=" in r.headers["server-timing"]
    # another class than the predicted one
    url = f"{stack.gateway}/explanations/mnist/1?target=1&steps=8"
    r = httpx.post(url, content=digits.pngs[7], timeout=60)
    assert r.status_code == 200 and r.json()["explanations"][0]["label"] == "1"


def test_v2_explain(stack: Stack, digits: Digits) -> None:
    image = base64.b64encode(digits.pngs[3]).decode()
    inp = {"name": "input", "shape": [1], "datatype": "BYTES", "data": [image]}
    req = {"parameters": {"steps": 8}, "inputs": [inp]}
    r = httpx.post(f"{stack.gateway}/v2/models/mnist/explain", json=req, timeout=60)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"] == ["3"] and out["attributions"]["shape"] == [1, 1, 28, 28]
    assert r.json()["parameters"]["backend"] == "torchserve"


def test_torchserve_own_explanations_api(stack: Stack, digits: Digits) -> None:
    """TorchServe's POST /explanations reaches the handler's explanation path (header explain: True)."""
    # version 1 by name: TorchServe also holds the INT8 version 2 (no gradients through quantised ops)
    r = httpx.post(f"{stack.torchserve}/explanations/mnist/1", content=digits.pngs[5],
                   headers={"X-Explain-Steps": "8"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "integrated_gradients" and body["steps"] == 8
    assert body["explanations"][0]["target"] == 5
    # the handler's own bounds, as 4xx JSON; the worker keeps serving
    r = httpx.post(f"{stack.torchserve}/explanations/mnist/1", content=digits.pngs[5],
                   headers={"X-Explain-Steps": "1000"}, timeout=60)
    assert r.status_code == 400 and "between 1 and 256" in r.json()["message"]
    r = httpx.post(f"{stack.torchserve}/predictions/mnist", content=digits.pngs[5], timeout=60)
    assert r.status_code == 200 and r.text.strip() == "5"


def test_explanation_client_errors_are_4xx(stack: Stack, digits: Digits) -> None:
    url = f"{stack.gateway}/explanations/mnist"
    cases = [
        (httpx.post(url, content=b"not an image", timeout=60), 415, "not an image"),
        (httpx.post(f"{url}?steps=0", content=digits.pngs[1], timeout=60), 400, "steps"),
        (httpx.post(f"{url}?target=cat", content=digits.pngs[1], timeout=60), 400, "target 'cat'"),
        (httpx.post(url, files=[("data", ("a.png", digits.pngs[1])), ("data", ("b.png", digits.pngs[2]))],
                    timeout=60), 413, "at most 1 image"),
        (httpx.post(url, content=digits.pngs[1], headers={"X-Backend": "paddle"}, timeout=60), 400,
         "does not explain"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, r.text
        assert words in r.json()["message"]  # TorchServe's error shape: code, type, message
    # an all-black image equals the baseline: every attribution is 0, and that is still an answer
    r = httpx.post(url, content=png(np.zeros((40, 30), np.uint8)), timeout=60)
    assert r.status_code == 200 and not np.any(r.json()["explanations"][0]["attributions"])
