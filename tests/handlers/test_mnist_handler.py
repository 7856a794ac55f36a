"""The TorchServe handler, driven directly with a fake TorchServe context (no server)."""

from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.encode import npy, png
from tests.support.mnist import held_out, preprocess
from tests.support.procs import REPO_ROOT
from triserve_common.manifest import PreprocessSpec, read_manifest


def _load_handler_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mnist_handler", REPO_ROOT / "handlers" / "mnist_handler.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeContext:
    """What the handler uses of ts.context.Context."""

    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir), "batch_size": 8}
        self.manifest = {"model": {"serializedFile": "model.pt"}}
        self.status: dict[int, tuple[int, str]] = {}
        self.content_type: dict[int, str] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type[idx] = value


@pytest.fixture(scope="module")
def handler_env(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> tuple[Any, Path]:
    model_dir = tmp_path_factory.mktemp("mar-extracted")
    shutil.copy(model_store / "mnist" / "1" / "model.pt", model_dir / "model.pt")
    (model_dir / "preprocess.json").write_text(PreprocessSpec().model_dump_json())
    module = _load_handler_module()
    handler = module.MnistHandler()
    handler.initialize(FakeContext(model_dir))
    return handler, model_dir


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, model_store: Path) -> tuple[np.ndarray, np.ndarray]:
    """64 held-out t10k digits (never seen in training) and their labels."""
    d = held_out(mnist_dir, read_manifest(model_store / "mnist" / "1"))[:64]
    return d.images, d.labels


def normalised(images: np.ndarray) -> np.ndarray:
    return preprocess(images, PreprocessSpec())


def test_exactly_one_class_for_torchserve() -> None:
    module = _load_handler_module()
    classes = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__]
    assert [c.__name__ for c in classes] == ["MnistHandler"]


def test_mixed_batch(handler_env: tuple[Any, Path], digits: tuple[np.ndarray, np.ndarray]) -> None:
    handler, model_dir = handler_env
    images, labels = digits
    ctx = FakeContext(model_dir)
    batch = [
        {"body": bytearray(png(images[0]))},
        {"data": npy(normalised(images[:10]))},
        {"body": b""},
        {"body": npy(np.zeros((3, 28, 28), np.float32))},
        {"body": npy(np.zeros((1, 1, 28, 28), np.float64))},
        {"body": b"definitely not an image"},
        {"body": png(images[1])[:60]},
        {"body": {"instances": [1, 2]}},
        {"body": png(np.full((56, 40), 255, np.uint8))},  # resized to 28x28
    ]
    out = handler.handle(batch, ctx)
    assert len(out) == len(batch)
    assert out[0] == int(labels[0]) and 0 not in ctx.status
    logits = np.load(io.BytesIO(out[1]), allow_pickle=False)
    assert logits.shape == (10, 10) and logits.dtype == np.float32
    assert ctx.content_type[1] == "application/octet-stream"
    ref_model = torch.jit.load(str(model_dir / "model.pt"))  # type: ignore[no-untyped-call]
    ref = ref_model(torch.from_numpy(normalised(images[:10]))).detach().numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    expected = {2: 400, 3: 400, 4: 400, 5: 415, 6: 422, 7: 415}
    for idx, code in expected.items():
        assert ctx.status[idx][0] == code, (idx, out[idx])
        assert out[idx]["code"] == code and out[idx]["message"]
        assert ctx.content_type[idx] == "application/json"
    assert isinstance(out[8], int) and 8 not in ctx.status


def test_png_equals_npy(handler_env: tuple[Any, Path], digits: tuple[np.ndarray, np.ndarray]) -> None:
    handler, model_dir = handler_env
    images, labels = digits
    ctx = FakeContext(model_dir)
    classes = handler.handle([{"body": png(img)} for img in images[:8]], ctx)
    logits = np.load(io.BytesIO(handler.handle([{"body": npy(normalised(images[:8]))}], ctx)[0]))
    assert classes == [int(c) for c in logits.argmax(1)]
    assert np.mean(np.array(classes) == labels[:8]) >= 0.875


def test_no_data_warmup(handler_env: tuple[Any, Path]) -> None:
    handler, model_dir = handler_env
    assert handler.handle(None, FakeContext(model_dir)) is None


def test_committed_mar_is_current(model_store: Path) -> None:
    """The committed archive carries today's handler and verifies against its manifest."""
    import zipfile

    from triserve_common.manifest import verify_artifact

    vdir = model_store / "mnist" / "1"
    manifest = read_manifest(vdir)
    for kind in ("torchserve", "onnx", "paddle", "torchscript"):
        verify_artifact(manifest, vdir, kind)
    with zipfile.ZipFile(vdir / "mnist.mar") as zf:
        packaged = zf.read("mnist_handler.py")
    assert packaged == (REPO_ROOT / "handlers" / "mnist_handler.py").read_bytes(), (
        "handlers/mnist_handler.py changed since model_store/mnist/1/mnist.mar was built: rerun "
        "`triserve-train --data-dir ../shared/data/mnist --version 1 --force`"
    )
    assert manifest.metrics.accuracy >= 0.98 and manifest.parity.passed
