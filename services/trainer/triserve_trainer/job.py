"""The training job's named steps over one :class:`JobContext` (:data:`TRAIN_STEPS`).

:func:`triserve_trainer.runner.run_job` runs them (or the INT8 / repack step lists), logging each step;
any step raises :class:`JobError` for what a user should read as one line. A version is staged inside
the store and published by an atomic rename as the last step, so a failed job publishes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triserve_common.manifest import DataSplit, Metrics, ModelInfo, Parity
from triserve_trainer.config import JobConfig
from triserve_trainer.data import DataError, ImageData, load_images, locate_data
from triserve_trainer.record import TrainedManifest, TrainingRecord
from triserve_trainer.store import (
    VersionExistsError,
    artifact_entries,
    check_target,
    data_file_entries,
    framework_versions,
    git_commit,
    next_version,
    now_utc,
    predictions_digest,
    publish,
    staging_dir,
)
from triserve_trainer.train import TrainConfig, TrainResult, evaluate, normalise, to_tensor

log = logging.getLogger("triserve_trainer")

FP32_BACKENDS = ["torchserve", "onnx", "paddle"]


class JobError(Exception):
    """A failure reported as one clear line; ``exit_code`` is the process status."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class JobContext:
    """What the steps hand each other."""

    config: JobConfig
    version: str = ""
    target: Path = Path()
    staging: Path = Path()
    data: ImageData | None = None
    trained: TrainResult | None = None
    model: torch.nn.Module | None = None
    macs: int = 0
    params: int = 0
    paths: dict[str, Path] = field(default_factory=dict)
    parity: Parity | None = None
    predictions: list[int] = field(default_factory=list)
    manifest: TrainedManifest | None = None
    keep_staging: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobResult:
    manifest: TrainedManifest
    version_dir: Path
    parity: Parity
    predictions: list[int]


Step = Callable[[JobContext], None]


def prepare(ctx: JobContext) -> None:
    """Resolve the version, refuse an existing one without --force, make the staging folder in the store."""
    cfg = ctx.config
    ctx.version = cfg.version or next_version(cfg.store, cfg.model)
    if not ctx.version.replace("-", "").replace("_", "").isalnum():
        raise JobError(f"--version {ctx.version!r}: use letters, digits, '-' or '_'")
    try:
        ctx.target = check_target(cfg.store, cfg.model, ctx.version, cfg.force)
    except VersionExistsError as exc:
        raise JobError(str(exc)) from exc
    ctx.staging = staging_dir(cfg.store, cfg.model, ctx.version)
    (ctx.staging / "training").mkdir()


def load_data(ctx: JobContext) -> None:
    """Find the data folder (configured, shared, system, cache, download) and load the split."""
    cfg, spec = ctx.config, ctx.config.spec
    try:
        folder = locate_data(
            spec.dataset.name,
            spec.required_splits,
            cfg.data_dir,
            download=cfg.download,
            progress=cfg.progress,
        )
        ctx.data = load_images(
            folder,
            cfg.seed,
            cfg.limit_train,
            cfg.limit_test,
            require_standard="train" in spec.required_splits,
        )
    except DataError as exc:
        raise JobError(str(exc)) from exc
    log.info(
        "data: %s split from %s (seed %d): %d train / %d held-out",
        ctx.data.split,
        ctx.data.source_dir,
        ctx.data.seed,
        len(ctx.data.train_labels),
        len(ctx.data.test_labels),
    )


def train_config(cfg: JobConfig) -> TrainConfig:
    spec = cfg.spec
    return TrainConfig(
        epochs=cfg.effective_epochs,
        batch_size=cfg.effective_batch_size,
        lr=cfg.effective_lr,
        seed=cfg.seed,
        threads=cfg.threads,
        augment=cfg.augment,
        work_dir=cfg.model_work_dir,
        resume=cfg.resume,
        progress=cfg.progress,
        widths=spec.widths,
        hidden=spec.hidden,
        augment_kind=spec.augment,
        tensorboard_dir=cfg.model_work_dir / "tensorboard",
        target_accuracy=spec.target_accuracy,
    )


def fit(ctx: JobContext) -> None:
    """Train (or resume), then check the multiply-accumulate budget."""
    from triserve_trainer.model import count_macs, count_parameters
    from triserve_trainer.train import CheckpointError, train

    cfg, spec = ctx.config, ctx.config.spec
    tcfg = train_config(cfg)
    if cfg.resume is None and tcfg.tensorboard_dir is not None and tcfg.tensorboard_dir.exists():
        shutil.rmtree(tcfg.tensorboard_dir)  # a fresh run starts a fresh TensorBoard history
    assert ctx.data is not None
    try:
        ctx.trained = train(ctx.data, tcfg, spec.preprocessing())
    except CheckpointError as exc:
        raise JobError(str(exc)) from exc
    ctx.model = ctx.trained.model.eval()
    ctx.macs, ctx.params = count_macs(ctx.model), count_parameters(ctx.model)
    if ctx.macs > spec.max_macs:
        raise JobError(f"model has {ctx.macs} MACs per image, over the {spec.max_macs} budget", 1)
    log.info(
        "held-out accuracy %.4f, loss %.4f; %d MACs/image, %d parameters; %.1fs training",
        ctx.trained.test_accuracy,
        ctx.trained.test_loss,
        ctx.macs,
        ctx.params,
        ctx.trained.training_seconds,
    )


def export(ctx: JobContext) -> None:
    """TorchScript, the TorchServe .mar (with labels and preprocessing), ONNX and Paddle Inference."""
    from triserve_trainer.export_mar import ArchiveError, build_mar
    from triserve_trainer.export_paddle import export_paddle
    from triserve_trainer.export_torch import export_onnx, export_torchscript

    spec, model = ctx.config.spec, ctx.model
    assert model is not None
    ts_path = export_torchscript(model, ctx.staging / "model.pt")
    try:
        mar = build_mar(ts_path, ctx.staging, spec.name, ctx.version, spec.preprocessing(), spec.labels)
    except ArchiveError as exc:
        raise JobError(str(exc), 1) from exc
    onnx_path = export_onnx(model, ctx.staging / "model.onnx")
    pd_model, pd_params = export_paddle(model, ctx.staging / "paddle")  # type: ignore[arg-type]
    ctx.paths = {
        "torchscript": ts_path,
        "mar": mar,
        "onnx": onnx_path,
        "pd_model": pd_model,
        "pd_params": pd_params,
    }


def held_out_inputs(ctx: JobContext) -> np.ndarray:
    assert ctx.data is not None
    return normalise(to_tensor(ctx.data.test_images), ctx.config.spec.preprocessing()).numpy()


def verify_parity(ctx: JobContext) -> None:
    """The three artifacts agree on every held-out image; the accuracy floor (--min-accuracy) holds."""
    from triserve_trainer.parity import check_parity

    cfg, p = ctx.config, ctx.paths
    x_test = held_out_inputs(ctx)
    ctx.parity = check_parity(
        p["torchscript"], p["onnx"], p["pd_model"], p["pd_params"], x_test, cfg.tolerance
    )
    log.info(
        "parity on %d held-out images: class agreement %s, max |logit diff| %s (tolerance %g): %s",
        ctx.parity.images,
        ctx.parity.class_agreement,
        ctx.parity.max_abs_logit_diff,
        ctx.parity.tolerance,
        "PASSED" if ctx.parity.passed else "FAILED",
    )
    assert ctx.model is not None and ctx.data is not None and ctx.trained is not None
    labels = torch.from_numpy(np.asarray(ctx.data.test_labels, dtype=np.int64))
    _, _, logits = evaluate(ctx.model, torch.from_numpy(x_test), labels)
    ctx.predictions = [int(c) for c in logits.argmax(1)]
    if not ctx.parity.passed:
        ctx.keep_staging = True
        raise JobError(
            f"parity check FAILED: {ctx.parity.model_dump_json()} (nothing published; "
            f"artifacts left in {ctx.staging})",
            1,
        )
    if cfg.min_accuracy is not None and ctx.trained.test_accuracy < cfg.min_accuracy:
        ctx.keep_staging = True
        raise JobError(
            f"held-out accuracy {ctx.trained.test_accuracy:.4f} < --min-accuracy "
            f"{cfg.min_accuracy} (nothing published; artifacts left in {ctx.staging})",
            1,
        )


def data_split(data: ImageData) -> DataSplit:
    return DataSplit(
        source_dir=str(data.source_dir),
        files=data_file_entries(data.files),
        split=data.split,  # type: ignore[arg-type]
        seed=data.seed,
        train_size=len(data.train_labels),
        test_size=len(data.test_labels),
    )


def write_summary(ctx: JobContext, **figures: Any) -> None:
    """``training/summary.json``: the held-out predictions' digest and the given figures."""
    summary = {"held_out_predictions_sha256_16": predictions_digest(ctx.predictions), **figures}
    (ctx.staging / "training" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def version_manifest(ctx: JobContext, **fields: Any) -> TrainedManifest:
    """The staged version's manifest: the model's served fields (specs.py), version, provenance, data
    split and parity, plus ``fields`` (metrics, model, artifacts, backends, training or quantization)."""
    assert ctx.data is not None and ctx.parity is not None
    return TrainedManifest(
        **ctx.config.spec.served_fields(),
        version=ctx.version,
        created_at=now_utc(),
        git_commit=git_commit(),
        framework_versions=framework_versions(),
        data=data_split(ctx.data),
        parity=ctx.parity,
        **fields,
    )


def write_training_history(ctx: JobContext, tcfg: TrainConfig) -> str | None:
    """History and curves into ``training/``, the TensorBoard events beside them (their folder, if any)."""
    from triserve_trainer.train import write_history

    assert ctx.trained is not None
    write_history(ctx.trained.history, ctx.staging / "training", tcfg)
    if tcfg.tensorboard_dir is None or not tcfg.tensorboard_dir.is_dir():
        return None
    shutil.copytree(tcfg.tensorboard_dir, ctx.staging / "training" / "tensorboard")
    return "training/tensorboard"


def training_record(ctx: JobContext, tcfg: TrainConfig, tensorboard_dir: str | None) -> TrainingRecord:
    """How the version was trained: data set and split, seed, epochs, optimiser, augmentation, command."""
    cfg, spec, trained, data = ctx.config, ctx.config.spec, ctx.trained, ctx.data
    assert trained is not None and data is not None
    return TrainingRecord(
        dataset=spec.dataset.name,
        split=data.split,
        seed=cfg.seed,
        epochs=len(trained.history),
        batch_size=tcfg.batch_size,
        lr=tcfg.lr,
        augment=spec.augment if cfg.augment else "none",
        threads=cfg.threads,
        training_seconds=round(trained.training_seconds, 2),
        resumed_from_epoch=_resumed_epoch(cfg),
        tensorboard_dir=tensorboard_dir,
        command=cfg.command(),
    )


def write_manifest(ctx: JobContext) -> None:
    """History, curves, TensorBoard events, summary and ``manifest.json`` into the staging folder."""
    from triserve_trainer.model import architecture

    spec, trained = ctx.config.spec, ctx.trained
    assert trained is not None
    tcfg = train_config(ctx.config)
    tensorboard_dir = write_training_history(ctx, tcfg)
    write_summary(ctx, held_out_accuracy=trained.test_accuracy, held_out_loss=trained.test_loss)
    ctx.manifest = version_manifest(
        ctx,
        metrics=Metrics(
            accuracy=trained.test_accuracy,
            loss=trained.test_loss,
            epochs=len(trained.history),
            training_seconds=round(trained.training_seconds, 2),
        ),
        model=ModelInfo(
            architecture=architecture(spec.widths, spec.hidden, len(spec.labels)),
            parameters=ctx.params,
            macs_per_image=ctx.macs,
        ),
        artifacts=artifact_entries(ctx.staging, ctx.paths["mar"].name),
        backends=FP32_BACKENDS,
        training=training_record(ctx, tcfg, tensorboard_dir),
    )
    write_manifest_file(ctx.staging, ctx.manifest)


def _resumed_epoch(cfg: JobConfig) -> int | None:
    if cfg.resume is None:
        return None
    from triserve_trainer.train import load_checkpoint

    return int(load_checkpoint(cfg.resume)["epoch"])


def write_manifest_file(folder: Path, manifest: TrainedManifest) -> Path:
    path = folder / "manifest.json"
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def publish_version(ctx: JobContext) -> None:
    """Move the complete staging folder into place with one atomic rename (exchange under --force)."""
    try:
        publish(ctx.staging, ctx.target, ctx.config.force)
    except VersionExistsError as exc:
        raise JobError(str(exc)) from exc
    log.info("published %s", ctx.target / "manifest.json")


TRAIN_STEPS: Sequence[tuple[str, Step]] = (
    ("prepare", prepare),
    ("data", load_data),
    ("train", fit),
    ("export", export),
    ("parity", verify_parity),
    ("manifest", write_manifest),
    ("publish", publish_version),
)
