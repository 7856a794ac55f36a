"""MNIST images for tests, cut from the t10k IDX files at test time (never committed)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from triserve_cli.sample import typical_index
from triserve_common.idx import load_split
from triserve_common.manifest import PreprocessSpec


def png(image: np.ndarray) -> bytes:
    """A uint8 [H, W] image as PNG bytes (what ``curl -T digit.png`` uploads)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    """An array in numpy's ``.npy`` format (the gateway → TorchServe body)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def preprocess(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 [N, 28, 28] → float32 [N, 1, 28, 28] per the manifest's preprocessing spec (reference)."""
    x = images.astype(np.float32) * np.float32(spec.scale)
    if spec.invert:
        x = np.float32(1.0) - x
    x = (x - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    return x[:, None, :, :].astype(np.float32)


@dataclass(frozen=True)
class Digits:
    """One t10k image per digit 0..9 (the most typical of each class), with labels and PNGs."""

    images: np.ndarray
    labels: np.ndarray
    pngs: list[bytes]


def one_per_digit(mnist_dir: Path) -> Digits:
    """The most typical t10k image of each digit 0..9 (same choice as ``triserve sample``)."""
    pair = load_split(mnist_dir, "t10k")
    idx = [typical_index(pair.images, pair.labels, d) for d in range(10)]
    images = pair.images[idx]
    return Digits(images, pair.labels[idx].astype(int), [png(img) for img in images])
