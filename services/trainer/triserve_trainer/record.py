"""What the trainer records in ``manifest.json`` beyond the shared schema.

:class:`TrainedManifest` extends :class:`triserve_common.manifest.Manifest` with fields the services
ignore today (pydantic drops unknown fields when they read the file) and the gateway can read later:
``backends`` (which runtimes serve this version), ``training`` (how the weights were made) and
``quantization`` (INT8 versions: method per backend, calibration, accuracy and agreement figures).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from triserve_common.manifest import Manifest


class TrainingRecord(BaseModel):
    """How the weights were made: data, split, seed, hyper-parameters, time, what was resumed."""

    dataset: str
    split: str
    seed: int
    epochs: int
    batch_size: int
    lr: float
    augment: str
    threads: int
    training_seconds: float
    resumed_from_epoch: int | None = None
    #: TensorBoard event files, relative to the version folder (``tensorboard --logdir <that>``).
    tensorboard_dir: str | None = None
    command: str


class BackendQuantization(BaseModel):
    """How one backend's INT8 artifact was made and how it scores on the held-out set."""

    method: str
    accuracy: float
    agreement_with_reference: float
    max_abs_logit_diff_vs_reference: float
    #: size of the INT8 model file (model.onnx; model.pt for torchserve)
    size_bytes: int


class QuantizationRecord(BaseModel):
    """An INT8 version made by post-training static quantisation of an FP32 version."""

    dtype: str = "int8"
    reference_version: str
    reference_accuracy: float
    calibration: dict[str, str | int]
    held_out_images: int
    backends: dict[str, BackendQuantization]
    not_quantized: dict[str, str]
    acceptance: str
    int8_torch_vs_onnx: dict[str, float]


class TrainedManifest(Manifest):
    """``manifest.json`` as the trainer writes it (a superset of :class:`Manifest`)."""

    backends: list[str] = Field(default_factory=lambda: ["torchserve", "onnx", "paddle"])
    training: TrainingRecord | None = None
    quantization: QuantizationRecord | None = None
