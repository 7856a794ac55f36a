"""The handler's explanations (Captum Integrated Gradients), driven with a fake TorchServe context.

The model is the committed TorchScript model; the checks are properties of Integrated Gradients
itself (completeness, zero attribution where the input equals the baseline), not stored numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.encode import npy, png
from tests.support.handler import load_handler_module
from tests.support.mnist import one_per_digit, preprocess
from triserve_common.manifest import read_manifest
from triserve_trainer.specs import get_spec

MNIST_SPEC = get_spec("mnist").preprocessing()

SPEC = MNIST_SPEC



class Context:
    """What the handler uses of ts.context.Context, with per-request headers as TorchServe passes them."""

    def __init__(self, model_dir: Path, headers: list[dict[str, Any]] | None = None) -> None:
        self.system_properties = {"model_dir": str(model_dir), "batch_size": 8}
        self.manifest = {"model": {"serializedFile": "model.pt"}}
        self.headers = headers or []
        self.status: dict[int, int] = {}
        self.content_type: dict[int, str] = {}

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        # TorchServe mixes the body's own entry ({"content-type": ...}) into the request headers
        return {"body": {"content-type": "application/octet-stream"}, **self.headers[idx]}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type[idx] = value


EXPLAIN = {"explain": "True"}


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> tuple[Any, Path]:
    model_dir = tmp_path_factory.mktemp("mar-explain")
    shutil.copy(model_store / "mnist" / "1" / "model.pt", model_dir / "model.pt")
    (model_dir / "preprocess.json").write_text(SPEC.model_dump_json())
    h = load_handler_module("mnist_handler_explain").MnistHandler()
    h.initialize(Context(model_dir))
    return h, model_dir


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, model_store: Path) -> tuple[np.ndarray, np.ndarray]:
    d = one_per_digit(mnist_dir, read_manifest(model_store / "mnist" / "1"))
    return d.images, d.labels


def test_integrated_gradients_properties(
    handler: tuple[Any, Path], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    h, model_dir = handler
    images, labels = digits
    ctx = Context(model_dir, [{**EXPLAIN, "X-Explain-Steps": "64"}])
    [answer] = h.handle([{"body": png(images[3])}], ctx)
    assert ctx.status == {} and ctx.content_type[0] == "application/json"
    assert answer["method"] == "integrated_gradients" and answer["steps"] == 64
    [e] = answer["explanations"]
    assert e["target"] == int(labels[3])  # the predicted class, which is the true one for a typical 3
    attr = np.asarray(e["attributions"], np.float32)
    assert attr.shape == (1, 28, 28)
    # IG attributes (x - baseline) * mean gradient: 0 (up to float32 rounding) where a pixel is the
    # (black) baseline, so the whole attribution sits on the digit's ink
    ink = np.abs(attr[0][images[3] > 0])
    assert np.abs(attr[0][images[3] == 0]).max() < 1e-6 * ink.max()
    assert ink.sum() > 0
    # completeness: sum of attributions = f(x) - f(baseline) up to the reported convergence delta
    model = torch.jit.load(str(model_dir / "model.pt"))  # type: ignore[no-untyped-call]
    x = torch.from_numpy(preprocess(images[3:4], SPEC))
    base = torch.full_like(x, answer["baseline"][0])
    with torch.no_grad():
        gap = float(model(x)[0, e["target"]] - model(base)[0, e["target"]])
    assert answer["baseline"][0] == pytest.approx(-SPEC.mean[0] / SPEC.std[0])
    assert float(attr.sum()) - gap == pytest.approx(e["convergence_delta"], abs=1e-3)
    np.testing.assert_allclose(e["logits"], model(x)[0].detach().numpy(), atol=1e-4)


def test_explanations_share_a_batch_with_predictions(
    handler: tuple[Any, Path], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    h, model_dir = handler
    images, labels = digits
    two = npy(preprocess(images[[1, 8]], SPEC))
    batch = [
        ({"body": png(images[0])}, EXPLAIN),
        ({"body": png(images[7])}, {}),  # a prediction in the same batch
        ({"body": two}, {**EXPLAIN, "x-explain-target": "2", "x-explain-steps": "8"}),
        ({"body": png(images[4])}, {**EXPLAIN, "x-explain-steps": "0"}),
        ({"body": png(images[4])}, {**EXPLAIN, "x-explain-steps": "many"}),
        ({"body": png(images[4])}, {**EXPLAIN, "x-explain-target": "10"}),
        ({"body": npy(preprocess(images[:5], SPEC))}, EXPLAIN),
        ({"body": b"not an image"}, EXPLAIN),
        ({"body": png(images[5])}, {"explain": "False"}),  # only "True" means explain
    ]
    ctx = Context(model_dir, [hdr for _, hdr in batch])
    out = h.handle([req for req, _ in batch], ctx)
    assert out[0]["explanations"][0]["target"] == int(labels[0]) and out[0]["steps"] == 32
    assert out[1] == int(labels[7]) and 1 not in ctx.status
    pair = out[2]["explanations"]
    assert [e["target"] for e in pair] == [2, 2] and out[2]["steps"] == 8
    assert all(np.asarray(e["attributions"]).shape == (1, 28, 28) for e in pair)
    for idx, code, words in [(3, 400, "between 1 and 256"), (4, 400, "integer"), (5, 400, "between 0 and 9"),
                             (6, 413, "at most 4 images"), (7, 415, "neither an image")]:
        assert ctx.status[idx] == code and out[idx]["code"] == code, (idx, out[idx])
        assert words in out[idx]["message"], out[idx]
        assert ctx.content_type[idx] == "application/json"
    assert out[8] == int(labels[5]) and 8 not in ctx.status
