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
from triserve_trainer.data import MnistData
from triserve_trainer.model import MnistNet

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


@dataclass
class TrainResult:
    model: MnistNet
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


def train(data: MnistData, cfg: TrainConfig, spec: PreprocessSpec) -> TrainResult:
    """Train (or resume) the CNN; checkpoint after every epoch into ``cfg.work_dir/checkpoints``."""
    configure_determinism(cfg.seed, cfg.threads)
    model = MnistNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_train = to_tensor(data.train_images)
    y_train = torch.from_numpy(data.train_labels.astype(np.int64))
    x_test = normalise(to_tensor(data.test_images), spec)
    y_test = torch.from_numpy(data.test_labels.astype(np.int64))
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(steps_per_epoch, total_steps)
    ckpt_dir = cfg.work_dir / "checkpoints"
    run_key = {"seed": cfg.seed, "batch_size": cfg.batch_size, "lr": cfg.lr, "train_size": n}

    start_epoch = 1
    history: list[dict[str, float]] = []
    if cfg.resume is not None:
        ckpt = load_checkpoint(cfg.resume)
        if ckpt["config"] != run_key:
            raise CheckpointError(
                f"checkpoint {cfg.resume} was made with {ckpt['config']}, this run is {run_key}"
            )
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimizer"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        log.info("resuming from %s after epoch %d", cfg.resume, start_epoch - 1)

    checkpoints: list[Path] = []
    bar = tqdm(
        range(start_epoch, cfg.epochs + 1),
        desc="train",
        unit="epoch",
        initial=start_epoch - 1,
        total=cfg.epochs,
        disable=not cfg.progress,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        # Per-epoch seeding: an interrupted + resumed run sees exactly the same batches and noise.
        epoch_seed = cfg.seed * 100_003 + epoch
        gen = torch.Generator().manual_seed(epoch_seed)
        torch.manual_seed(epoch_seed)
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, lr = 0.0, 0, cfg.lr
        for b in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + b
            lr = lr_at(step, total_steps, warmup, cfg.lr)
            for group in optimiser.param_groups:
                group["lr"] = lr
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            xb = x_train[idx]
            if cfg.augment:
                xb = augment(xb, gen)
            yb = y_train[idx]
            logits = model(normalise(xb, spec))
            loss = F.cross_entropy(logits, yb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            loss_sum += float(loss.detach()) * yb.shape[0]
            correct += int((logits.argmax(1) == yb).sum())
        test_loss, test_acc, _ = evaluate(model, x_test, y_test)
        row = {
            "epoch": float(epoch),
            "lr": lr,
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{test_acc:.4f}")
        log.info(
            "epoch %d/%d: train loss %.4f acc %.4f | held-out loss %.4f acc %.4f (%.1fs)",
            epoch,
            cfg.epochs,
            row["train_loss"],
            row["train_accuracy"],
            test_loss,
            test_acc,
            row["seconds"],
        )
        payload = {
            "model": model.state_dict(),
            "optimizer": optimiser.state_dict(),
            "epoch": epoch,
            "history": history,
            "metrics": {"test_loss": test_loss, "test_accuracy": test_acc},
            "config": run_key,
        }
        path = ckpt_dir / f"epoch-{epoch:03d}.pt"
        save_checkpoint(path, payload)
        save_checkpoint(ckpt_dir / "last.pt", payload)
        checkpoints.append(path)
    bar.close()

    test_loss, test_acc, _ = evaluate(model, x_test, y_test)
    return TrainResult(
        model=model,
        history=history,
        test_loss=test_loss,
        test_accuracy=test_acc,
        training_seconds=sum(r["seconds"] for r in history),
        checkpoints=checkpoints,
    )


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
    ax_acc.axhline(98.0, color="grey", linestyle=":", linewidth=1, label="98 % target")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=80, metadata={"Software": None})
    plt.close(fig)
    return [json_path, csv_path, png_path]
