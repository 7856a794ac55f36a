"""The TorchServe handler, driven directly with a fake TorchServe context (no server): both models,
labels and preprocessing from the archive's files, no model constants in the handler itself."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.encode import npy, png
from tests.support.handler import HANDLER_FILE, handler_files, load_handler_module
from tests.support.mnist import held_out, preprocess
from triserve_common.manifest import PreprocessSpec, list_versions, read_manifest, verify_artifact
from triserve_trainer.specs import get_spec

MNIST_SPEC = get_spec("mnist").preprocessing()



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
    return extracted_handler(model_store / "mnist" / "1" / "mnist.mar", tmp_path_factory.mktemp("mar-mnist"))


def extracted_handler(mar: Path, model_dir: Path) -> tuple[Any, Path]:
    """The archive unpacked as TorchServe does, and the handler initialised on it."""
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(model_dir)
    module = load_handler_module()
    handler = module.MnistHandler()
    handler.initialize(FakeContext(model_dir))
    return handler, model_dir


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, model_store: Path) -> tuple[np.ndarray, np.ndarray]:
    """64 held-out t10k digits (never seen in training) and their labels."""
    d = held_out(mnist_dir, read_manifest(model_store / "mnist" / "1"))[:64]
    return d.images, d.labels


def normalised(images: np.ndarray) -> np.ndarray:
    return preprocess(images, MNIST_SPEC)


def test_exactly_one_class_for_torchserve() -> None:
    module = load_handler_module()
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
    assert out[0] == int(labels[0]) and 0 not in ctx.status  # like TorchServe's MNIST example: 7
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
    assert out[8] in range(10) and 8 not in ctx.status
    assert ctx.content_type[0] == "application/json"


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


def committed_versions(model_store: Path) -> list[Path]:
    return [model_store / m / v for m in ("mnist", "fashion") for v in list_versions(model_store, m)]


def test_committed_mars_are_current(model_store: Path) -> None:
    """Every committed archive carries today's handler and verifies against its manifest."""
    versions = committed_versions(model_store)
    assert {f"{p.parent.name}/{p.name}" for p in versions} >= {"mnist/1", "fashion/1"}
    for vdir in versions:
        manifest = read_manifest(vdir)
        for kind in manifest.artifacts:
            verify_artifact(manifest, vdir, kind)
        with zipfile.ZipFile(vdir / f"{manifest.name}.mar") as zf:
            packaged = {path.name: zf.read(path.name) for path in handler_files()}
            assert json.loads(zf.read("preprocess.json")) == manifest.preprocessing.model_dump()
            names = json.loads(zf.read("index_to_name.json"))
        assert [names[str(i)] for i in range(len(names))] == manifest.labels
        assert packaged == {path.name: path.read_bytes() for path in handler_files()}, (
            f"handlers/ changed since {vdir}/{manifest.name}.mar was built: rerun "
            f"`triserve-train --model {manifest.name} --version {manifest.version} --repack`"
        )


def test_mnist_v1_weights_unchanged(model_store: Path) -> None:
    """mnist/1 is never retrained: its weights are the ones first published (sha256 of model.pt)."""
    manifest = read_manifest(model_store / "mnist" / "1")
    (entry,) = manifest.artifacts["torchscript"].files
    assert entry.sha256 == "ba1a3373acdfa50c87a2e612b4e503d72b9b613477e26b6100805baa852dd935"
    with zipfile.ZipFile(model_store / "mnist" / "1" / "mnist.mar") as zf:
        assert zf.read("model.pt") == (model_store / "mnist" / "1" / "model.pt").read_bytes()
    assert manifest.metrics.accuracy >= 0.98 and manifest.parity.passed


def test_fashion_answers_label_names(model_store: Path, tmp_path: Path) -> None:
    """Raw images of the fashion archive are answered with the class name (JSON string)."""
    from triserve_cli.sample import pick

    handler, model_dir = extracted_handler(model_store / "fashion" / "1" / "fashion.mar", tmp_path)
    boot = pick(Path("/usr/share/datasets/fashion-mnist"), digit=9)
    trouser = pick(Path("/usr/share/datasets/fashion-mnist"), digit=1)
    ctx = FakeContext(model_dir)
    out = handler.handle([{"body": boot.png()}, {"body": trouser.png()}], ctx)
    assert [json.loads(o) for o in out] == ["Ankle boot", "Trouser"]
    spec = PreprocessSpec.model_validate_json((model_dir / "preprocess.json").read_text())
    x = preprocess(np.stack([boot.pixels, trouser.pixels]), spec)
    logits = np.load(io.BytesIO(handler.handle([{"body": npy(x)}], ctx)[0]))
    assert logits.argmax(1).tolist() == [9, 1]


def test_archive_without_preprocessing_is_refused(model_store: Path, tmp_path: Path) -> None:
    shutil.copy(model_store / "mnist" / "1" / "model.pt", tmp_path / "model.pt")
    handler = load_handler_module().MnistHandler()
    with pytest.raises(RuntimeError, match=r"preprocess\.json not in the archive"):
        handler.initialize(FakeContext(tmp_path))


def test_npy_shape_comes_from_the_archive(model_store: Path, tmp_path: Path) -> None:
    handler, model_dir = extracted_handler(model_store / "mnist" / "1" / "mnist.mar", tmp_path)
    spec = json.loads((model_dir / "preprocess.json").read_text())
    assert handler.shape == (1, spec["height"], spec["width"])
    ctx = FakeContext(model_dir)
    wrong = handler.handle([{"body": npy(np.zeros((1, 1, 8, 8), np.float32))}], ctx)
    assert ctx.status[0][0] == 400 and "[N,1,28,28]" in wrong[0]["message"]


def test_no_model_constants_in_the_handler() -> None:
    """Preprocessing numbers and image sizes live in the archive's files, not in the handler's code."""
    code = "\n".join(path.read_text() for path in handler_files())
    assert HANDLER_FILE.read_text() in code
    for constant in ("0.1307", "0.3081", "0.2860", "0.3530"):
        assert constant not in code, constant
    assert not re.search(r"\b28\b", code), "image size 28 written into the handler"
