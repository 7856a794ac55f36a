"""Per-model constants: data set, network widths, preprocessing, augmentation, training defaults, budgets.

Everything model-specific lives here (and in the manifest the job writes from it); the rest of the
trainer, the handler and the services read it from the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

from triserve_common.datasets import FASHION_MNIST, MNIST, Dataset
from triserve_common.manifest import PreprocessSpec, TensorSpec

Augment = Literal["affine", "flip-shift"]

#: The exported models' input and output names (TorchScript, ONNX, Paddle; the manifest's tensors).
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ServedFields(TypedDict):
    """What a version's manifest says about the model it serves (the same for FP32 and INT8 versions)."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: PreprocessSpec
    labels: list[str]


@dataclass(frozen=True)
class ModelSpec:
    """What ``triserve-train --model NAME`` trains (the network and optimiser defaults are shared)."""

    name: str
    dataset: Dataset
    #: splits the data folder must hold: ("t10k",) lets mnist fall back to a t10k-only split.
    required_splits: tuple[str, ...]
    mean: float
    std: float
    augment: Augment
    epochs: int
    max_macs: int
    #: held-out accuracy the committed version must reach (documented target, checked by tests).
    target_accuracy: float
    widths: tuple[int, int, int, int] = (16, 32, 32, 64)
    hidden: int = 128
    lr: float = 3e-3
    batch_size: int = 128

    @property
    def labels(self) -> list[str]:
        return list(self.dataset.labels)

    def preprocessing(self) -> PreprocessSpec:
        """The manifest's preprocessing block (28x28 grayscale, scale 1/255, this model's mean/std)."""
        return PreprocessSpec(width=28, height=28, mean=[self.mean], std=[self.std])

    def served_fields(self) -> ServedFields:
        """The manifest's model fields: name, FP32 ``input`` [-1,1,28,28] → ``logits`` [-1,classes],
        preprocessing, labels."""
        return ServedFields(
            name=self.name,
            inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, 1, 28, 28])],
            outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, len(self.labels)])],
            preprocessing=self.preprocessing(),
            labels=self.labels,
        )


MODEL_SPECS: dict[str, ModelSpec] = {
    "mnist": ModelSpec(
        name="mnist",
        dataset=MNIST,
        required_splits=("t10k",),
        mean=0.1307,
        std=0.3081,
        augment="affine",
        epochs=15,
        max_macs=5_000_000,
        target_accuracy=0.98,
    ),
    "fashion": ModelSpec(
        name="fashion",
        dataset=FASHION_MNIST,
        required_splits=("train", "t10k"),
        mean=0.2860,
        std=0.3530,
        augment="flip-shift",
        epochs=6,
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
