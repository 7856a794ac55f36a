"""MNIST and Fashion-MNIST images for tests, cut from the t10k IDX files at test time (never committed).

Accuracy is only ever checked on images the model was NOT trained on: the committed model was
trained on 8,000 t10k images, so :func:`held_out` returns the other 2,000, chosen by the trainer's
own split function with the seed and size its manifest records.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tests.support.encode import png
from triserve_cli.sample import typical_index
from triserve_common.datasets import find_dataset
from triserve_common.idx import load_split
from triserve_common.manifest import Manifest, PreprocessSpec, read_manifest
from triserve_trainer.data import stratified_split
from triserve_trainer.specs import get_spec


def preprocess(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 [N, 28, 28] → float32 [N, 1, 28, 28] per the manifest's preprocessing spec (reference)."""
    x = images.astype(np.float32) * np.float32(spec.scale)
    if spec.invert:
        x = np.float32(1.0) - x
    x = (x - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    return x[:, None, :, :].astype(np.float32)


@dataclass(frozen=True)
class Digits:
    """MNIST images with their labels, as PNGs and preprocessed for the model (computed on demand)."""

    images: np.ndarray
    """uint8 ``[N, 28, 28]``."""
    labels: np.ndarray
    """int ``[N]``."""
    spec: PreprocessSpec

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, items: slice | list[int]) -> Digits:
        return Digits(self.images[items], self.labels[items], self.spec)

    @cached_property
    def pngs(self) -> list[bytes]:
        """Each image as PNG bytes (what ``curl -T digit.png`` uploads)."""
        return [png(img) for img in self.images]

    @cached_property
    def x(self) -> np.ndarray:
        """float32 ``[N, 1, 28, 28]``, preprocessed per the model's manifest."""
        return preprocess(self.images, self.spec)


def held_out(mnist_dir: Path, manifest: Manifest) -> Digits:
    """The t10k images ``manifest``'s model was not trained on (in t10k order).

    A model trained on the standard split never saw t10k; one trained on the t10k pair alone saw all
    but the trainer's stratified held-out part (:func:`triserve_trainer.data.stratified_split`).
    """
    pair = load_split(mnist_dir, "t10k")
    images, labels = pair.images, pair.labels.astype(np.int64)
    if manifest.data.split == "t10k-stratified":
        _, test = stratified_split(pair.labels, manifest.data.test_size, manifest.data.seed)
        images, labels = images[test], labels[test]
    return Digits(images, labels, manifest.preprocessing)


def one_per_digit(mnist_dir: Path, manifest: Manifest) -> Digits:
    """The most typical held-out image of each digit 0..9 (chosen as ``triserve sample`` chooses)."""
    digits = held_out(mnist_dir, manifest)
    return digits[[typical_index(digits.images, digits.labels, d) for d in range(10)]]


def model_held_out(model_store: Path, name: str, version: str) -> Digits:
    """The held-out t10k images of store model ``name`` ``version``, found by the project's data lookup
    (:func:`triserve_common.datasets.find_dataset`, never a download: ``../shared/data/mnist``, Debian's
    ``/usr/share/datasets/fashion-mnist``, ...) for the data set its trainer spec names."""
    manifest = read_manifest(model_store / name / version)
    folder = find_dataset(get_spec(name).dataset.name, ("t10k",), download=False, progress=False)
    return held_out(folder, manifest)


def typical_per_class(images: Digits) -> Digits:
    """The most typical image of each class present, in class order (as ``triserve sample`` picks)."""
    classes = sorted(int(c) for c in np.unique(images.labels))
    return images[[typical_index(images.images, images.labels, c) for c in classes]]
