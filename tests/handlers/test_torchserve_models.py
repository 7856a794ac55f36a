"""Real TorchServe serving the committed ``fashion/1`` and INT8 ``mnist/2`` archives through start.sh:
``curl -T boot.png /predictions/fashion`` answers the label name; the INT8 TorchScript runs in the worker."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.support.encode import npy
from tests.support.mnist import one_per_digit, preprocess
from tests.support.procs import REPO_ROOT
from tests.support.stack import free_port_config, service_processes, wait_torchserve_worker
from triserve_cli.sample import pick
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration

STORE = REPO_ROOT / "model_store"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Served:
    inference: str
    management: str

    def put(self, model: str, body: bytes) -> httpx.Response:
        return httpx.put(f"{self.inference}/predictions/{model}", content=body, timeout=60.0)


@pytest.fixture(scope="module")
def torchserve(service_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # the committed store itself: start.sh checks every archive against its manifest and links
    # <model>/<version>/<model>.mar as <model>.v<version>.mar
    config = free_port_config(tmp_path_factory.mktemp("ts-run"), STORE)
    env = {"TS_MODEL_STORE": str(STORE), "TS_MODELS": "fashion=fashion.v1.mar,mnist=mnist.v2.mar"}
    proc = service_processes(config, service_logs, {"torchserve": env})["torchserve"]
    proc.start()
    try:
        served = Served(config.url(config.ts_inference_port), config.url(config.ts_management_port))
        for model in ("fashion", "mnist"):
            wait_torchserve_worker(served.management, proc, model=model)
        yield served
    finally:
        proc.stop()


def test_fashion_answers_the_label_name(torchserve: Served) -> None:
    """One typical test image per class: TorchServe answers the name of the class the model predicts."""
    manifest = read_manifest(STORE / "fashion" / "1")
    samples = [pick(FASHION_DIR, digit=cls) for cls in range(10)]
    model = torch.jit.load(str(STORE / "fashion" / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        x = preprocess(np.stack([s.pixels for s in samples]), manifest.preprocessing)
        predicted = model(torch.from_numpy(x)).argmax(1).tolist()
    answers = [torchserve.put("fashion", s.png()) for s in samples]
    assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
    assert [r.json() for r in answers] == [manifest.labels[p] for p in predicted]
    assert sum(p == cls for cls, p in enumerate(predicted)) >= 8  # a 91.8 % model on typical images
    assert torchserve.put("fashion", samples[9].png()).text == '"Ankle boot"'


def test_fashion_rejects_bad_input(torchserve: Served) -> None:
    r = torchserve.put("fashion", npy(np.zeros((2, 1, 14, 14), np.float32)))
    assert r.status_code == 400 and "[N,1,28,28]" in r.json()["message"]


def test_int8_mnist_in_torchserve(torchserve: Served, mnist_dir: Path) -> None:
    digits = one_per_digit(mnist_dir, read_manifest(STORE / "mnist" / "2"))
    answers = [torchserve.put("mnist", p) for p in digits.pngs]
    assert [r.status_code for r in answers] == [200] * 10
    assert [int(r.text) for r in answers] == digits.labels.tolist()
    x = preprocess(digits.images, read_manifest(STORE / "mnist" / "2").preprocessing)
    r = torchserve.put("mnist", npy(x))
    logits = np.load(io.BytesIO(r.content), allow_pickle=False)
    direct = torch.jit.load(str(STORE / "mnist" / "2" / "model.pt"))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        expected = direct(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    described = httpx.get(f"{torchserve.management}/models/mnist", timeout=10).json()[0]
    assert described["modelVersion"] == "2"
    assert json.loads(json.dumps(described))["workers"][0]["status"] == "READY"
