"""The job's typed configuration and the ``triserve-train`` argument parser that builds it."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

from triserve_trainer.specs import MODEL_SPECS, ModelSpec, get_spec


@dataclass(frozen=True)
class JobConfig:
    """Everything one ``triserve-train`` run needs; ``None`` hyper-parameters take the model's default."""

    model: str = "mnist"
    data_dir: Path | None = None
    store: Path = Path("model_store")
    version: str | None = None
    force: bool = False
    epochs: int | None = None
    seed: int = 0
    batch_size: int | None = None
    lr: float | None = None
    threads: int = 2
    work_dir: Path = Path("build/trainer")
    resume: Path | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    tolerance: float = 1e-4
    min_accuracy: float | None = None
    augment: bool = True
    progress: bool = True
    download: bool = True
    quantize_from: str | None = None
    calibration_images: int = 1000
    int8_max_drop: float = 0.005
    int8_min_agreement: float = 0.995
    repack: bool = False

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.model)

    @property
    def model_work_dir(self) -> Path:
        """Checkpoints and TensorBoard files of this model (``<work-dir>/<model>``)."""
        return self.work_dir / self.model

    @property
    def effective_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.spec.epochs

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else self.spec.batch_size

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.spec.lr

    def command(self) -> str:
        """The ``triserve-train`` command line that reproduces this configuration."""
        default = JobConfig()
        parts = ["triserve-train"]
        for f in fields(self):
            value, base = getattr(self, f.name), getattr(default, f.name)
            flag = "--" + f.name.replace("_", "-")
            if value == base:
                continue
            if isinstance(value, bool):
                parts.append(
                    {"augment": "--no-augment", "progress": "--no-progress", "download": "--no-download"}.get(
                        f.name, flag
                    )
                )
            else:
                parts += [flag, str(value)]
        return shlex.join(parts)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JobConfig:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["augment"] = not args.no_augment
        values["progress"] = not args.no_progress
        values["download"] = not args.no_download
        return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="triserve-train",
        description="Train a model (mnist, fashion), export TorchServe .mar / ONNX / Paddle Inference, "
        "check parity and publish a versioned model store entry; or make an INT8 version of an "
        "existing one (--quantize-from), or rebuild a version's .mar with the current handler (--repack).",
    )
    _where_args(p)
    _training_args(p)
    _check_args(p)
    _mode_args(p)
    return p


def _where_args(p: argparse.ArgumentParser) -> None:
    """Model, data, store and version."""
    p.add_argument(
        "--model",
        "--name",
        dest="model",
        default="mnist",
        choices=sorted(MODEL_SPECS),
        help="model to train [%(default)s]",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="IDX folder (default: $TRISERVE_MNIST_DIR / $TRISERVE_FASHION_MNIST_DIR, "
        "../shared/data/<dataset>, the Debian package, the user cache, else a download)",
    )
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store root [%(default)s]")
    p.add_argument("--version", default=None, help="version to write (default: next free, 1 for a new model)")
    p.add_argument("--force", action="store_true", help="replace an existing version (atomically)")


def _training_args(p: argparse.ArgumentParser) -> None:
    """Hyper-parameters, threads, checkpoints."""
    p.add_argument("--epochs", type=int, default=None, help="default: the model's (mnist 15, fashion 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW, cosine)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads [%(default)s]")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("build/trainer"),
        help="checkpoints and TensorBoard logs, per model (not committed) [%(default)s]",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="checkpoint file (or a checkpoints dir → its last.pt) to continue from",
    )


def _check_args(p: argparse.ArgumentParser) -> None:
    """Smoke-run limits, parity and accuracy floors, output."""
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N held-out images")
    p.add_argument("--tolerance", type=float, default=1e-4, help="parity: max |logit diff| [%(default)s]")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="fail (exit 1) if held-out accuracy is below this fraction, e.g. 0.98",
    )
    p.add_argument("--no-augment", action="store_true", help="train without random shifts/rotations/flips")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--no-download", action="store_true", help="never download data; fail if it is not here")


def _mode_args(p: argparse.ArgumentParser) -> None:
    """INT8 quantisation and .mar repack."""
    p.add_argument(
        "--quantize-from",
        default=None,
        metavar="VERSION",
        help="make an INT8 version of this FP32 version (static post-training quantisation)",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=1000,
        help="training images used to calibrate the INT8 ranges [%(default)s]",
    )
    p.add_argument(
        "--int8-max-drop",
        type=float,
        default=0.005,
        help="INT8: largest held-out accuracy drop accepted vs the FP32 version [%(default)s]",
    )
    p.add_argument(
        "--int8-min-agreement",
        type=float,
        default=0.995,
        help="INT8: smallest class agreement with the FP32 version accepted [%(default)s]",
    )
    p.add_argument(
        "--repack",
        action="store_true",
        help="rebuild --version's .mar from its model.pt with the current handler (weights untouched)",
    )
