"""Seeded, resumable training loop with light augmentation, per-epoch checkpoints and logs."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from triserve_common.manifest import PreprocessSpec
from triserve_trainer.data import ImageData
from triserve_trainer.model import MNIST_HIDDEN, MNIST_WIDTHS, ConvNet

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"]


class CheckpointError(Exception):
    """A checkpoint cannot be used to resume (missing, unreadable or from another configuration)."""


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    augment: bool = True
    work_dir: Path = Path("build/trainer")
    resume: Path | None = None
    progress: bool = True
    widths: tuple[int, int, int, int] = MNIST_WIDTHS
    hidden: int = MNIST_HIDDEN
    augment_kind: str = "affine"  # "affine" (digits) | "flip-shift" (clothes)
    #: TensorBoard event files go here (None: none written).
    tensorboard_dir: Path | None = None
    target_accuracy: float | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"


@dataclass
class TrainResult:
    model: ConvNet
    history: list[dict[str, float]]
    test_loss: float
    test_accuracy: float
    training_seconds: float
    checkpoints: list[Path] = field(default_factory=list)


def configure_determinism(seed: int, threads: int) -> None:
    """Same seed + same data + same thread count → bit-identical weights."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def to_tensor(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 ``[N,28,28]`` → float32 ``[N,1,28,28]`` in [0,1] (normalised later, after augmentation)."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def normalise(x01: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    return (x01 - spec.mean[0]) / spec.std[0]


def augment(x01: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random small affine: rotation ±10°, scale 0.9-1.1, shift ±2 px (background stays 0)."""
    n = x01.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * 2 / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def flip_shift(x01: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (p=0.5) and a whole-pixel shift of up to ±2 px (background 0).

    Nearest-neighbour sampling at whole-pixel offsets moves pixels without blurring them (clothes keep
    their texture; the held-out images are never blurred either).
    """
    n = x01.shape[0]
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = torch.randint(-2, 3, (n, 2), generator=gen).float() * (2 / x01.shape[-1])
    zero, one = torch.zeros(n), torch.ones(n)
    theta = torch.stack(
        [torch.stack([flip, zero, shift[:, 0]], 1), torch.stack([zero, one, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="nearest", padding_mode="zeros", align_corners=False)


AUGMENTATIONS = {"affine": augment, "flip-shift": flip_shift}


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to 1 % of ``base`` (stateless → resume-friendly)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, logits) on normalised inputs."""
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    loss = float(F.cross_entropy(logits, y))
    acc = float((logits.argmax(1) == y).float().mean())
    return loss, acc, logits


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    for key in ("model", "optimizer", "epoch", "history", "config"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return payload


@dataclass
class _Run:
    """The state one training run carries from epoch to epoch."""

    model: ConvNet
    optimiser: torch.optim.Optimizer
    history: list[dict[str, float]]
    start_epoch: int
    steps_per_epoch: int
    total_steps: int
    run_key: dict[str, Any]


def _start(data: ImageData, cfg: TrainConfig) -> _Run:
    """A fresh model and optimiser, or the state of ``cfg.resume``'s checkpoint."""
    configure_determinism(cfg.seed, cfg.threads)
    model = ConvNet(cfg.widths, cfg.hidden)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = int(data.train_labels.shape[0])
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    run_key: dict[str, Any] = {"seed": cfg.seed, "batch_size": cfg.batch_size, "lr": cfg.lr, "train_size": n}
    if tuple(cfg.widths) != MNIST_WIDTHS or cfg.hidden != MNIST_HIDDEN or cfg.augment_kind != "affine":
        run_key |= {"widths": list(cfg.widths), "hidden": cfg.hidden, "augment": cfg.augment_kind}
    run = _Run(model, optimiser, [], 1, steps_per_epoch, steps_per_epoch * cfg.epochs, run_key)
    if cfg.resume is not None:
        ckpt = load_checkpoint(cfg.resume)
        if ckpt["config"] != run_key:
            raise CheckpointError(
                f"checkpoint {cfg.resume} was made with {ckpt['config']}, this run is {run_key}"
            )
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimizer"])
        run.history = list(ckpt["history"])
        run.start_epoch = int(ckpt["epoch"]) + 1
        log.info("resuming from %s after epoch %d", cfg.resume, run.start_epoch - 1)
    return run


def _train_epoch(
    run: _Run,
    epoch: int,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    cfg: TrainConfig,
    spec: PreprocessSpec,
    writer: Any,
) -> tuple[float, float, float]:
    """One epoch over the training set: (mean loss, accuracy, last learning rate)."""
    # Per-epoch seeding: an interrupted + resumed run sees exactly the same batches and noise.
    epoch_seed = cfg.seed * 100_003 + epoch
    gen = torch.Generator().manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)
    run.model.train()
    n = x_train.shape[0]
    perm = torch.randperm(n, generator=gen)
    warmup = min(run.steps_per_epoch, run.total_steps)
    augment_fn = AUGMENTATIONS[cfg.augment_kind]
    loss_sum, correct, lr = 0.0, 0, cfg.lr
    for b in range(run.steps_per_epoch):
        step = (epoch - 1) * run.steps_per_epoch + b
        lr = lr_at(step, run.total_steps, warmup, cfg.lr)
        for group in run.optimiser.param_groups:
            group["lr"] = lr
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        xb = augment_fn(x_train[idx], gen) if cfg.augment else x_train[idx]
        yb = y_train[idx]
        logits = run.model(normalise(xb, spec))
        loss = F.cross_entropy(logits, yb)
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        run.optimiser.step()
        loss_sum += float(loss.detach()) * yb.shape[0]
        correct += int((logits.argmax(1) == yb).sum())
        if writer is not None and step % 20 == 0:
            writer.add_scalar("batch/train_loss", float(loss.detach()), step + 1)
            writer.add_scalar("batch/lr", lr, step + 1)
    return loss_sum / n, correct / n, lr


def tensorboard_writer(cfg: TrainConfig, start_step: int) -> Any:
    """A SummaryWriter on ``cfg.tensorboard_dir`` (None when unset); a resumed run purges later steps."""
    if cfg.tensorboard_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    cfg.tensorboard_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(str(cfg.tensorboard_dir), purge_step=start_step if start_step > 1 else None)


def train(data: ImageData, cfg: TrainConfig, spec: PreprocessSpec) -> TrainResult:
    """Train (or resume) the CNN; checkpoint after every epoch into ``cfg.checkpoint_dir``.

    Deterministic algorithms are switched on for the run and back to their previous state afterwards
    (quantised kernels, used later by INT8 jobs in the same process, have no deterministic variant).
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(data, cfg, spec)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(data: ImageData, cfg: TrainConfig, spec: PreprocessSpec) -> TrainResult:
    run = _start(data, cfg)
    x_train = to_tensor(data.train_images)
    y_train = torch.from_numpy(data.train_labels.astype(np.int64))
    x_test = normalise(to_tensor(data.test_images), spec)
    y_test = torch.from_numpy(data.test_labels.astype(np.int64))
    writer = tensorboard_writer(cfg, (run.start_epoch - 1) * run.steps_per_epoch + 1)
    checkpoints: list[Path] = []
    bar = tqdm(
        range(run.start_epoch, cfg.epochs + 1),
        desc="train",
        unit="epoch",
        initial=run.start_epoch - 1,
        total=cfg.epochs,
        disable=not cfg.progress,
    )
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            train_loss, train_acc, lr = _train_epoch(run, epoch, x_train, y_train, cfg, spec, writer)
            test_loss, test_acc, _ = evaluate(run.model, x_test, y_test)
            row = {
                "epoch": float(epoch),
                "lr": lr,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "seconds": time.perf_counter() - t0,
            }
            run.history.append(row)
            bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{test_acc:.4f}")
            _log_epoch(row, cfg.epochs, writer, epoch * run.steps_per_epoch)
            checkpoints.append(_checkpoint(run, epoch, row, cfg.checkpoint_dir))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    test_loss, test_acc, _ = evaluate(run.model, x_test, y_test)
    return TrainResult(
        model=run.model,
        history=run.history,
        test_loss=test_loss,
        test_accuracy=test_acc,
        training_seconds=sum(r["seconds"] for r in run.history),
        checkpoints=checkpoints,
    )


def _log_epoch(row: dict[str, float], epochs: int, writer: Any, step: int) -> None:
    log.info(
        "epoch %d/%d: train loss %.4f acc %.4f | held-out loss %.4f acc %.4f (%.1fs)",
        int(row["epoch"]),
        epochs,
        row["train_loss"],
        row["train_accuracy"],
        row["test_loss"],
        row["test_accuracy"],
        row["seconds"],
    )
    if writer is not None:
        for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "lr", "seconds"):
            writer.add_scalar(f"epoch/{key}", row[key], step)
        writer.flush()


def _checkpoint(run: _Run, epoch: int, row: dict[str, float], ckpt_dir: Path) -> Path:
    payload = {
        "model": run.model.state_dict(),
        "optimizer": run.optimiser.state_dict(),
        "epoch": epoch,
        "history": run.history,
        "metrics": {"test_loss": row["test_loss"], "test_accuracy": row["test_accuracy"]},
        "config": run.run_key,
    }
    path = ckpt_dir / f"epoch-{epoch:03d}.pt"
    save_checkpoint(path, payload)
    save_checkpoint(ckpt_dir / "last.pt", payload)
    return path


def write_history(
    history: list[dict[str, float]], out_dir: Path, cfg: TrainConfig | None = None
) -> list[Path]:
    """history.json, history.csv and curves.png (matplotlib, Agg) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, png_path = out_dir / "history.json", out_dir / "history.csv", out_dir / "curves.png"
    doc: dict[str, Any] = {"epochs": history}
    if cfg is not None:
        doc["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (int(row[k]) if k == "epoch" else f"{row[k]:.6g}") for k in HISTORY_FIELDS})
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train (augmented)")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="held-out")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], label="train (augmented)")
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in history], label="held-out")
    if cfg is not None and cfg.target_accuracy is not None:
        target = 100 * cfg.target_accuracy
        ax_acc.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"{target:g} % target")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=80, metadata={"Software": None})
    plt.close(fig)
    return [json_path, csv_path, png_path]
