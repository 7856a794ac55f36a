"""scripts/gpu_check.py on this machine (no CUDA): the CPU half runs for real and the script says CUDA is
absent (exit 2); a tampered archive is a setup error (exit 3); the CUDA/CPU comparison is pure logic."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from tests.support.procs import REPO_ROOT


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = load()


def test_one_command_runs_what_this_machine_has(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Here (no CUDA): the CPU half, exit 2, saying so. On a CUDA machine: both halves, exit 0."""
    rc = gpu_check.main(["--data-dir", str(mnist_dir), "--seconds", "0.2"])
    out = capsys.readouterr().out
    assert "2000 held-out t10k images" in out and "batch 1:" in out and "batch 64:" in out
    if torch.cuda.is_available():
        assert rc == gpu_check.OK == 0 and "PASS" in out and "CUDA  batch 1:" in out
        return
    assert rc == gpu_check.NO_CUDA == 2
    assert "CUDA IS ABSENT" in out
    accuracy = float(out.split("CPU accuracy ")[1].split()[0])
    assert accuracy >= 0.98


def test_tampered_archive_is_a_setup_error(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    shutil.copytree(REPO_ROOT / "model_store" / "mnist" / "1", store / "mnist" / "1")
    mar = store / "mnist" / "1" / "mnist.mar"
    data = bytearray(mar.read_bytes())
    data[-1] ^= 0xFF
    mar.write_bytes(bytes(data))
    rc = gpu_check.main(["--store", str(store), "--data-dir", str(mnist_dir), "--seconds", "0.1"])
    assert rc == gpu_check.SETUP == 3
    assert "does not match the manifest" in capsys.readouterr().err


def test_compare_needs_equal_classes_and_close_logits() -> None:
    rng = np.random.default_rng(0)
    cpu = rng.standard_normal((50, 10)).astype(np.float32)
    labels = cpu.argmax(1)
    assert gpu_check.compare(cpu + 1e-4, cpu, labels, tolerance=1e-2)
    assert not gpu_check.compare(cpu + 0.5, cpu, labels, tolerance=1e-2)
    swapped = cpu.copy()
    swapped[0] = -swapped[0]  # another class for image 0
    assert not gpu_check.compare(swapped, cpu, labels, tolerance=100.0)
