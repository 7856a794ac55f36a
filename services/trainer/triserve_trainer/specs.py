"""Per-model constants: data set, network widths, preprocessing, augmentation, training defaults, budgets.

Everything model-specific lives here (and in the manifest the job writes from it); the rest of the
trainer, the handler and the services read it from the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from triserve_common.datasets import FASHION_MNIST, MNIST, Dataset
from triserve_common.manifest import PreprocessSpec

Augment = Literal["affine", "flip-shift"]


@dataclass(frozen=True)
class ModelSpec:
    """What ``triserve-train --model NAME`` trains."""

    name: str
    dataset: Dataset
    #: splits the data folder must hold: ("t10k",) lets mnist fall back to a t10k-only split.
    required_splits: tuple[str, ...]
    widths: tuple[int, int, int, int]
    hidden: int
    mean: float
    std: float
    augment: Augment
    epochs: int
    lr: float
    batch_size: int
    max_macs: int
    #: held-out accuracy the committed version must reach (documented target, checked by tests).
    target_accuracy: float

    @property
    def labels(self) -> list[str]:
        return list(self.dataset.labels)

    def preprocessing(self) -> PreprocessSpec:
        """The manifest's preprocessing block (28x28 grayscale, scale 1/255, this model's mean/std)."""
        return PreprocessSpec(width=28, height=28, mean=[self.mean], std=[self.std])


MODEL_SPECS: dict[str, ModelSpec] = {
    "mnist": ModelSpec(
        name="mnist",
        dataset=MNIST,
        required_splits=("t10k",),
        widths=(16, 32, 32, 64),
        hidden=128,
        mean=0.1307,
        std=0.3081,
        augment="affine",
        epochs=15,
        lr=3e-3,
        batch_size=128,
        max_macs=5_000_000,
        target_accuracy=0.98,
    ),
    "fashion": ModelSpec(
        name="fashion",
        dataset=FASHION_MNIST,
        required_splits=("train", "t10k"),
        widths=(16, 32, 32, 64),
        hidden=128,
        mean=0.2860,
        std=0.3530,
        augment="flip-shift",
        epochs=6,
        lr=3e-3,
        batch_size=128,
        max_macs=10_000_000,
        target_accuracy=0.91,
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; ValueError naming the known ones."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(sorted(MODEL_SPECS))})") from None
