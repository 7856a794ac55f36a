"""Request bodies for the benchmark and the load test: MNIST digits as PNG, ``.npy`` and OIP v2 bodies.

Digits come from the t10k IDX files (``$TRISERVE_MNIST_DIR`` or ``../shared/data/mnist``); the v2 and
``.npy`` tensors are preprocessed with the model's manifest (``preprocessing``), exactly as the gateway does.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from triserve_common import codec
from triserve_common.idx import load_split
from triserve_common.manifest import PreprocessSpec, read_manifest, resolve_version
from triserve_common.paths import REPO_ROOT

"""The repository root (``services/cli/triserve_cli/bench`` is four levels down)."""

DEFAULT_MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
DEFAULT_MODEL_STORE = REPO_ROOT / "model_store"

SWEEP_INDICES: tuple[int, ...] = (3, 2, 1, 30, 4, 15, 11, 0, 61, 7)
"""One t10k image per class 0..9 (``SWEEP_INDICES[d]`` has label ``d``), used by the correctness pre-check."""

LOAD_INDEX = 0
"""The t10k image sent under load (a 7; one of :data:`SWEEP_INDICES`)."""


def mnist_dir(path: Path | str | None = None) -> Path:
    """The MNIST folder: ``path``, else ``$TRISERVE_MNIST_DIR``, else ``../shared/data/mnist``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get("TRISERVE_MNIST_DIR", DEFAULT_MNIST_DIR))


def preprocess_spec(model_store: Path, model: str = "mnist", version: str | None = None) -> PreprocessSpec:
    """The model's preprocessing from its manifest (``version``, else the latest)."""
    return read_manifest(model_store / model / resolve_version(model_store, model, version)).preprocessing


def to_tensor(image: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """A 28x28 uint8 digit -> float32 ``[1,1,H,W]`` as the manifest says (scale, invert, mean/std)."""
    pixels = image.astype(np.float32)
    if spec.invert:
        pixels = 255.0 - pixels
    x = pixels * np.float32(spec.scale)
    x = (x - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    return x.reshape(1, 1, *image.shape).astype(np.float32)


def png_bytes(image: npt.NDArray[np.uint8]) -> bytes:
    """The digit as a grayscale PNG (what a user uploads)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(tensor: npt.NDArray[np.float32]) -> bytes:
    """``np.save`` of the tensor (the body TorchServe's handler takes)."""
    buf = io.BytesIO()
    np.save(buf, tensor, allow_pickle=False)
    return buf.getvalue()


def v2_binary(tensor: npt.NDArray[np.float32]) -> tuple[bytes, dict[str, str]]:
    """A binary OIP v2 request for ``input``, asking for ``logits`` as binary data."""
    return codec.encode_request({"input": tensor}, outputs=["logits"], binary=True)


def v2_json(tensor: npt.NDArray[np.float32]) -> tuple[bytes, dict[str, str]]:
    """A JSON OIP v2 request (what a curl user sends)."""
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(tensor.shape),
                "datatype": "FP32",
                "data": tensor.ravel().tolist(),
            }
        ]
    }
    return json.dumps(body).encode(), {"content-type": codec.JSON_CONTENT_TYPE}


@dataclass(frozen=True)
class Digit:
    """One MNIST test digit with every encoding a path may send."""

    index: int
    label: int
    png: bytes
    npy: bytes
    v2: bytes
    v2_headers: dict[str, str]
    v2_json: bytes


def load_digits(
    indices: tuple[int, ...], data_dir: Path | str | None = None, model_store: Path | None = None
) -> list[Digit]:
    """The digits at ``indices`` of t10k, encoded every way."""
    split = load_split(mnist_dir(data_dir), "t10k")
    spec = preprocess_spec(model_store or DEFAULT_MODEL_STORE)
    digits = []
    for index in indices:
        image = split.images[index]
        tensor = to_tensor(image, spec)
        body, headers = v2_binary(tensor)
        digits.append(
            Digit(
                index=index,
                label=int(split.labels[index]),
                png=png_bytes(image),
                npy=npy_bytes(tensor),
                v2=body,
                v2_headers=headers,
                v2_json=v2_json(tensor)[0],
            )
        )
    return digits
