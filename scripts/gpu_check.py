#!/usr/bin/env python3
"""GPU check of the TorchServe model path: committed archive on CUDA vs CPU, answers and throughput.

    python scripts/gpu_check.py [--data-dir ../shared/data/mnist] [--seconds 2]

What it does (about a minute; at most a few):

1. verifies ``model_store/mnist/1/mnist.mar`` against its manifest's sha256 and extracts it;
2. loads the handler *packaged in the archive* twice, the way TorchServe does: once with
   ``gpu_id=0`` (→ ``cuda:0`` when torch has CUDA) and once without a GPU (→ CPU);
3. sends both the held-out MNIST images (the trainer's seeded split of t10k; all of t10k when the
   trainer package is not importable) as ``.npy`` batches of 64 — the gateway's request format — and
   checks the CUDA answers equal the CPU answers (same class for every image, logits within
   ``--tolerance``);
4. prints images/s at batch 1 and batch 64 through ``handle()`` on CUDA and on CPU.

Needs only torch (a CUDA build for the GPU half), numpy and Pillow (the handler's imports) and the
repository; the project's packages are used from ``services/`` when their imports are available.

Exit status: 0 = CUDA ran and agreed with the CPU; 1 = CUDA and CPU answers differ;
2 = no CUDA on this machine: only the CPU half ran (it says so); 3 = setup problem (missing
artifact, data or module; tampered archive).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _pkg in ("common", "trainer"):
    sys.path.insert(0, str(REPO / "services" / _pkg))

OK, MISMATCH, NO_CUDA, SETUP = 0, 1, 2, 3
BATCH = 64


class SetupError(Exception):
    """Something the check needs is missing (exit 3)."""


@dataclass
class Context:
    """What the handler reads of TorchServe's ``ts.context.Context``."""

    system_properties: dict[str, Any]
    manifest: dict[str, Any]

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        if code >= 400:
            raise RuntimeError(f"handler answered {code} {phrase} for request {idx}")

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass


def extract_archive(version_dir: Path, into: Path) -> dict[str, Any]:
    """Verify ``mnist.mar`` against ``manifest.json`` and extract it; returns the manifest."""
    manifest_path = version_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SetupError(f"{manifest_path} not found")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    (entry,) = manifest["artifacts"]["torchserve"]["files"]
    mar = version_dir / entry["path"]
    digest = hashlib.sha256(mar.read_bytes()).hexdigest() if mar.is_file() else "missing"
    if digest != entry["sha256"]:
        raise SetupError(f"{mar}: sha256 {digest} does not match the manifest's {entry['sha256']}")
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(into)
    return manifest


def load_handler_module(model_dir: Path) -> ModuleType:
    """The archive's handler, imported as TorchServe's worker does: the unpacked folder on ``sys.path``
    (the handler imports the modules packed beside it)."""
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))
    spec = importlib.util.spec_from_file_location("packaged_mnist_handler", model_dir / "mnist_handler.py")
    if spec is None or spec.loader is None:
        raise SetupError(f"no mnist_handler.py in the archive ({model_dir})")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise SetupError(f"the handler's imports are missing here: {exc}") from exc
    return module


def new_handler(module: ModuleType, model_dir: Path, gpu_id: int | None) -> tuple[Any, Context]:
    props: dict[str, Any] = {"model_dir": str(model_dir), "batch_size": 8}
    if gpu_id is not None:
        props["gpu_id"] = gpu_id
    ctx = Context(props, {"model": {"serializedFile": "model.pt"}})
    handler = module.MnistHandler()
    handler.initialize(ctx)
    return handler, ctx


def heldout_images(data_dir: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images, labels, description): the trainer's held-out split, or all of t10k."""
    try:
        from triserve_common.idx import load_split
    except ImportError as exc:
        raise SetupError(f"cannot read MNIST: {exc}") from exc
    try:
        pair = load_split(data_dir, "t10k")
    except (OSError, ValueError) as exc:
        raise SetupError(f"MNIST t10k not readable in {data_dir}: {exc}") from exc
    split = manifest["data"]
    if split.get("split") == "t10k-stratified":
        try:
            from triserve_trainer.data import stratified_split
        except ImportError as exc:
            print(f"note: trainer package not importable ({exc}); using all {len(pair.labels)} t10k images")
        else:
            _, test = stratified_split(pair.labels, int(split["test_size"]), int(split["seed"]))
            return pair.images[test], pair.labels[test], f"{test.size} held-out t10k images"
    return pair.images, pair.labels, f"all {len(pair.labels)} t10k images"


def normalise(images: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """uint8 [N,28,28] → float32 [N,1,28,28] per the manifest's preprocessing (the gateway's job)."""
    x = images.astype(np.float32) * np.float32(prep["scale"])
    if prep.get("invert"):
        x = np.float32(1.0) - x
    x = (x - np.float32(prep["mean"][0])) / np.float32(prep["std"][0])
    return x[:, None, :, :]


def npy_body(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def run_batches(handler: Any, ctx: Context, x: np.ndarray) -> np.ndarray:
    """Logits of every image, sent as .npy requests of ``BATCH`` images through ``handle()``."""
    out = []
    for start in range(0, len(x), BATCH):
        (answer,) = handler.handle([{"body": npy_body(x[start : start + BATCH])}], ctx)
        out.append(np.load(io.BytesIO(answer), allow_pickle=False))
    return np.concatenate(out)


def throughput(handler: Any, ctx: Context, x: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s through ``handle()`` with one .npy request of ``batch`` images, after a warm-up."""
    body = [{"body": npy_body(x[:batch])}]
    for _ in range(5):
        handler.handle(body, ctx)
    done, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        handler.handle(body, ctx)
        done += batch
    return done / (time.perf_counter() - started)


def compare(gpu: np.ndarray, cpu: np.ndarray, labels: np.ndarray, tolerance: float) -> bool:
    same = gpu.argmax(1) == cpu.argmax(1)
    diff = float(np.abs(gpu - cpu).max())
    print(f"classes equal on {int(same.sum())}/{same.size} images; max |logit diff| {diff:.2e}")
    print(f"accuracy: CUDA {float((gpu.argmax(1) == labels).mean()):.4f}, "
          f"CPU {float((cpu.argmax(1) == labels).mean()):.4f}")
    return bool(same.all()) and diff <= tolerance


def check(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    import torch

    cuda = bool(torch.cuda.is_available())
    out(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}); "
        f"CUDA available: {cuda}" + (f" ({torch.cuda.get_device_name(args.gpu_id)})" if cuda else ""))
    with tempfile.TemporaryDirectory(prefix="triserve-gpu-check-") as tmp:
        model_dir = Path(tmp)
        manifest = extract_archive(args.store / args.model / args.version, model_dir)
        module = load_handler_module(model_dir)
        images, labels, what = heldout_images(args.data_dir, manifest)
        x = normalise(images, manifest["preprocessing"])
        out(f"archive {args.model}/{args.version} verified; {what}")
        cpu_handler, cpu_ctx = new_handler(module, model_dir, gpu_id=None)
        cpu_logits = run_batches(cpu_handler, cpu_ctx, x)
        rows = [("CPU", cpu_handler, cpu_ctx)]
        agreed = True
        if cuda:
            gpu_handler, gpu_ctx = new_handler(module, model_dir, gpu_id=args.gpu_id)
            out(f"handler devices: {gpu_handler.device} (gpu_id={args.gpu_id}) and {cpu_handler.device}")
            if gpu_handler.device.type != "cuda":
                raise SetupError(f"the handler chose {gpu_handler.device} although CUDA is available")
            agreed = compare(run_batches(gpu_handler, gpu_ctx, x), cpu_logits, labels, args.tolerance)
            rows.insert(0, ("CUDA", gpu_handler, gpu_ctx))
        else:
            acc = float((cpu_logits.argmax(1) == labels).mean())
            out(f"CPU accuracy {acc:.4f} on {what}")
        out("throughput through handle() (.npy requests), images/s:")
        for name, handler, ctx in rows:
            rates = [throughput(handler, ctx, x, batch, args.seconds) for batch in (1, BATCH)]
            out(f"  {name:<4}  batch 1: {rates[0]:>10.1f}   batch {BATCH}: {rates[1]:>10.1f}")
    if not cuda:
        out("CUDA IS ABSENT on this machine (torch.cuda.is_available() is False): only the CPU half ran.")
        return NO_CUDA
    out("PASS: CUDA answers equal the CPU answers" if agreed else "FAIL: CUDA and CPU answers differ")
    return OK if agreed else MISMATCH


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_data = os.environ.get("TRISERVE_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--version", default="1")
    parser.add_argument("--data-dir", type=Path, default=Path(default_data))
    parser.add_argument("--gpu-id", type=int, default=0, help="the gpu_id TorchServe would pass")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput measurement")
    parser.add_argument("--tolerance", type=float, default=1e-2, help="largest allowed |logit diff|")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return check(args)
    except SetupError as exc:
        print(f"setup problem: {exc}", file=sys.stderr)
        return SETUP


if __name__ == "__main__":
    sys.exit(main())
