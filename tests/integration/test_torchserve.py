"""Real TorchServe 0.12 serving the committed ``model_store/mnist/1/mnist.mar`` via start.sh."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.encode import npy, png
from tests.support.mnist import one_per_digit, preprocess
from tests.support.procs import REPO_ROOT, ServiceProcess
from tests.support.stack import free_port_config, service_processes, wait_torchserve_worker
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration

SPEC = read_manifest(REPO_ROOT / "model_store" / "mnist" / "1").preprocessing


class TorchServe:
    def __init__(self, proc: ServiceProcess, inference: str, management: str, metrics: str) -> None:
        self.proc, self.inference, self.management, self.metrics = proc, inference, management, metrics

    def predict(self, body: bytes, **kw: object) -> httpx.Response:
        # curl -T file == PUT with the raw file as body
        return httpx.put(f"{self.inference}/predictions/mnist", content=body, timeout=30.0, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def torchserve(service_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    run_dir = tmp_path_factory.mktemp("torchserve-run")
    config = free_port_config(run_dir, REPO_ROOT / "model_store", models="mnist:1")
    proc = service_processes(config, service_logs)["torchserve"]
    proc.start()
    try:
        ts = TorchServe(
            proc,
            config.url(config.ts_inference_port),
            config.url(config.ts_management_port),
            config.url(config.ts_metrics_port),
        )
        wait_torchserve_worker(ts.management, proc)
        yield ts
    finally:
        proc.stop()
    # nothing of TorchServe's written into the checkout
    assert (run_dir / "torchserve" / "logs" / "ts_log.log").is_file()
    assert not (REPO_ROOT / "logs").exists() or not any((REPO_ROOT / "logs").glob("ts_log*"))


@pytest.fixture(scope="module")
def samples(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The most typical held-out t10k image of each digit 0..9, cut at test time."""
    digits = one_per_digit(mnist_dir, read_manifest(REPO_ROOT / "model_store" / "mnist" / "1"))
    return digits.images, digits.labels


def normalised(images: np.ndarray) -> np.ndarray:
    return preprocess(images, SPEC)


def test_model_registered_with_archive_config(torchserve: TorchServe) -> None:
    info = httpx.get(f"{torchserve.management}/models/mnist", timeout=10).json()[0]
    assert info["batchSize"] == 8 and info["maxBatchDelay"] == 2 and info["responseTimeout"] == 30
    assert info["workers"] and info["workers"][0]["status"] == "READY"


def test_raw_png_all_digits(torchserve: TorchServe, samples: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = samples
    for image, label in zip(images, labels, strict=True):
        r = torchserve.predict(png(image))
        assert r.status_code == 200, r.text
        assert r.text.strip() == str(int(label))  # like the stock example: `curl -T 0.png` → 0


def test_npy_batch_equals_raw_images(torchserve: TorchServe, samples: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = samples
    r = torchserve.predict(npy(normalised(images)))
    assert r.status_code == 200, r.text
    logits = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert logits.shape == (10, 10) and logits.dtype == np.float32
    assert list(logits.argmax(1)) == [int(v) for v in labels]
    raw = [int(torchserve.predict(png(img)).text) for img in images]
    assert raw == list(logits.argmax(1))


def test_concurrent_mixed_requests_are_batched_and_isolated(
    torchserve: TorchServe, samples: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = samples
    bodies = [png(img) for img in images] + [b"not an image", npy(np.zeros((2, 28, 28), np.float32))] * 3
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(torchserve.predict, bodies))
    for r, label in zip(responses[:10], labels, strict=True):
        assert r.status_code == 200 and r.text.strip() == str(int(label))
    for r in responses[10:]:
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["message"]


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"", 400, "empty"),
        (b"hello, not an image", 415, "image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 415, "image"),
        (None, 400, "shape"),
    ],
)
def test_bad_input_4xx_and_worker_survives(
    torchserve: TorchServe, samples: tuple[np.ndarray, np.ndarray], body: bytes | None, code: int, needle: str
) -> None:
    if body is None:
        body = npy(np.zeros((1, 28, 28), np.float32))
    r = torchserve.predict(body)
    assert r.status_code == code, r.text
    err = r.json()
    assert err["code"] == code and needle in err["message"]
    images, labels = samples
    ok = torchserve.predict(png(images[7]))
    assert ok.status_code == 200 and ok.text.strip() == str(int(labels[7]))


def test_wrong_dtype_npy(torchserve: TorchServe) -> None:
    r = torchserve.predict(npy(np.zeros((1, 1, 28, 28), np.float64)))
    assert r.status_code == 400 and "float32" in r.json()["message"]


def test_metrics_endpoint(torchserve: TorchServe) -> None:
    r = httpx.get(f"{torchserve.metrics}/metrics", timeout=10)
    assert r.status_code == 200
    assert "# TYPE" in r.text and "ts_inference_requests_total" in r.text
