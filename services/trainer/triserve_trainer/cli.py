"""``triserve-train``: data → training → TorchScript/.mar/ONNX/Paddle exports → parity → model store.

Exit codes: 0 success; 1 parity (or --min-accuracy) failed, nothing published; 2 bad data, options,
checkpoint or an existing version without --force.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from triserve_common.manifest import (
    DataSplit,
    Manifest,
    Metrics,
    ModelInfo,
    Parity,
    PreprocessSpec,
    TensorSpec,
)

log = logging.getLogger("triserve_trainer")

DEFAULT_DATA_DIR = Path(os.environ.get("TRISERVE_MNIST_DIR", "../shared/data/mnist"))
LABELS = [str(i) for i in range(10)]


class JobError(Exception):
    """A failure reported as one clear line; ``exit_code`` is the process status."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class JobResult:
    manifest: Manifest
    version_dir: Path
    parity: Parity
    predictions: list[int]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="triserve-train",
        description="Train the MNIST CNN, export TorchServe .mar / ONNX / Paddle Inference, "
        "check parity and write a versioned model store entry.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="MNIST IDX files (4 standard files, or only the t10k pair) [%(default)s]",
    )
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store root [%(default)s]")
    p.add_argument("--name", default="mnist", help="model name [%(default)s]")
    p.add_argument("--version", default=None, help="version to write (default: next free, 1 for a new model)")
    p.add_argument("--force", action="store_true", help="overwrite an existing version")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, cosine) [%(default)s]")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads [%(default)s]")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("build/trainer"),
        help="checkpoints and staging (not committed) [%(default)s]",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="checkpoint file (or a checkpoints dir → its last.pt) to continue from",
    )
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N held-out images")
    p.add_argument("--tolerance", type=float, default=1e-4, help="parity: max |logit diff| [%(default)s]")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="fail (exit 1) if held-out accuracy is below this fraction, e.g. 0.98",
    )
    p.add_argument("--no-augment", action="store_true", help="train without random shifts/rotations")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _quiet_third_party() -> None:
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR if name.startswith("torch") else logging.WARNING)


def run_job(args: argparse.Namespace) -> JobResult:
    """The whole job; raises :class:`JobError` for anything a user should read as one line."""
    from triserve_trainer.data import DataError, load_mnist
    from triserve_trainer.export_mar import ArchiveError, build_mar
    from triserve_trainer.export_paddle import export_paddle
    from triserve_trainer.export_torch import (
        INPUT_NAME,
        ONNX_OPSET,
        OUTPUT_NAME,
        export_onnx,
        export_torchscript,
    )
    from triserve_trainer.model import ARCHITECTURE, MAX_MACS, count_macs, count_parameters
    from triserve_trainer.parity import check_parity
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
    )
    from triserve_trainer.train import (
        CheckpointError,
        TrainConfig,
        evaluate,
        normalise,
        to_tensor,
        train,
        write_history,
    )

    _quiet_third_party()
    version = args.version or next_version(args.store, args.name)
    if not version.replace("-", "").replace("_", "").isalnum():
        raise JobError(f"--version {version!r}: use letters, digits, '-' or '_'")
    try:
        target = check_target(args.store, args.name, version, args.force)
    except VersionExistsError as exc:
        raise JobError(str(exc)) from exc
    spec = PreprocessSpec()
    staging = args.work_dir / "staging" / f"{args.name}-{version}"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "training").mkdir(parents=True)
    file_log = logging.FileHandler(staging / "training" / "train.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("triserve_trainer").addHandler(file_log)
    try:
        steps = tqdm(total=5, desc="job", unit="step", disable=args.no_progress, position=1, leave=False)
        # 1. data
        try:
            data = load_mnist(args.data_dir, args.seed, args.limit_train, args.limit_test)
        except DataError as exc:
            raise JobError(str(exc)) from exc
        log.info(
            "data: %s split from %s (seed %d): %d train / %d held-out",
            data.split,
            data.source_dir,
            data.seed,
            len(data.train_labels),
            len(data.test_labels),
        )
        steps.update()
        # 2. training
        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            threads=args.threads,
            augment=not args.no_augment,
            work_dir=args.work_dir,
            resume=args.resume,
            progress=not args.no_progress,
        )
        try:
            result = train(data, cfg, spec)
        except CheckpointError as exc:
            raise JobError(str(exc)) from exc
        model = result.model.eval()
        macs, params = count_macs(model), count_parameters(model)
        if macs > MAX_MACS:
            raise JobError(f"model has {macs} MACs per image, over the {MAX_MACS} budget", 1)
        log.info(
            "held-out accuracy %.4f, loss %.4f; %d MACs/image, %d parameters; %.1fs training",
            result.test_accuracy,
            result.test_loss,
            macs,
            params,
            result.training_seconds,
        )
        write_history(result.history, staging / "training", cfg)
        steps.update()
        # 3. exports
        ts_path = export_torchscript(model, staging / "model.pt")
        try:
            mar = build_mar(ts_path, staging, args.name, version, spec)
        except ArchiveError as exc:
            raise JobError(str(exc), 1) from exc
        onnx_path = export_onnx(model, staging / "model.onnx")
        pd_model, pd_params = export_paddle(model, staging / "paddle")
        steps.update()
        # 4. parity on the held-out images
        x_test = normalise(to_tensor(data.test_images), spec).numpy()
        parity = check_parity(ts_path, onnx_path, pd_model, pd_params, x_test, args.tolerance)
        log.info(
            "parity on %d held-out images: class agreement %s, max |logit diff| %s (tolerance %g): %s",
            parity.images,
            parity.class_agreement,
            parity.max_abs_logit_diff,
            parity.tolerance,
            "PASSED" if parity.passed else "FAILED",
        )
        steps.update()
        _, _, logits = evaluate(
            model,
            to_tensor(data.test_images).sub(spec.mean[0]).div(spec.std[0]),
            _labels_tensor(data.test_labels),
        )
        predictions = [int(c) for c in logits.argmax(1)]
        if not parity.passed:
            raise JobError(
                f"parity check FAILED: {parity.model_dump_json()} (nothing published; "
                f"artifacts left in {staging})",
                1,
            )
        if args.min_accuracy is not None and result.test_accuracy < args.min_accuracy:
            raise JobError(
                f"held-out accuracy {result.test_accuracy:.4f} < --min-accuracy "
                f"{args.min_accuracy} (nothing published; artifacts left in {staging})",
                1,
            )
        # 5. manifest + publish
        summary = {
            "held_out_predictions_sha256_16": predictions_digest(predictions),
            "held_out_accuracy": result.test_accuracy,
            "held_out_loss": result.test_loss,
        }
        (staging / "training" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        manifest = Manifest(
            name=args.name,
            version=version,
            created_at=now_utc(),
            git_commit=git_commit(),
            framework_versions=framework_versions(),
            data=DataSplit(
                source_dir=str(data.source_dir),
                files=data_file_entries(data.files),
                split=data.split,  # type: ignore[arg-type]
                seed=data.seed,
                train_size=len(data.train_labels),
                test_size=len(data.test_labels),
            ),
            metrics=Metrics(
                accuracy=result.test_accuracy,
                loss=result.test_loss,
                epochs=len(result.history),
                training_seconds=round(result.training_seconds, 2),
            ),
            model=ModelInfo(architecture=ARCHITECTURE, parameters=params, macs_per_image=macs),
            inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, 1, 28, 28])],
            outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, 10])],
            preprocessing=spec,
            labels=LABELS,
            parity=parity,
            artifacts=artifact_entries(staging, mar.name),
        )
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
        log.info(
            "ONNX opset %d; artifacts: %s",
            ONNX_OPSET,
            {k: sum(f.size_bytes for f in a.files) for k, a in manifest.artifacts.items()},
        )
        steps.update()
        steps.close()
    finally:
        logging.getLogger("triserve_trainer").removeHandler(file_log)
        file_log.close()
    try:
        version_dir = publish(staging, target, args.force)
    except VersionExistsError as exc:
        raise JobError(str(exc)) from exc
    log.info("wrote %s", version_dir / "manifest.json")
    return JobResult(manifest=manifest, version_dir=version_dir, parity=parity, predictions=predictions)


def _labels_tensor(labels: npt.NDArray[np.uint8]) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    logging.getLogger("triserve_trainer").setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        result = run_job(args)
    except JobError as exc:
        print(f"triserve-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("triserve-train: interrupted (resume with --resume <work-dir>/checkpoints)", file=sys.stderr)
        return 130
    m = result.manifest
    print(
        json.dumps(
            {
                "version_dir": str(result.version_dir),
                "split": m.data.split,
                "held_out_accuracy": m.metrics.accuracy,
                "held_out_loss": m.metrics.loss,
                "parity": m.parity.model_dump(),
                "macs_per_image": m.model.macs_per_image,
                "parameters": m.model.parameters,
                "artifact_bytes": {k: sum(f.size_bytes for f in a.files) for k, a in m.artifacts.items()},
                "training_seconds": m.metrics.training_seconds,
                "job_seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    return 0
