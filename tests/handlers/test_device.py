"""The handler's device: ``cuda:<gpu_id>`` when TorchServe hands out a GPU and torch has CUDA, else CPU.

CUDA cannot run here: the choice is pure logic (``select_device``), and the CPU half runs for real.
``scripts/gpu_check.py`` runs the CUDA half on a GPU machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.handlers.test_mnist_handler import FakeContext
from tests.support.handler import load_handler_module
from triserve_trainer.specs import get_spec

MNIST_SPEC = get_spec("mnist").preprocessing()


@pytest.mark.parametrize(
    ("gpu_id", "cuda", "expected"),
    [
        (0, True, "cuda:0"),
        (3, True, "cuda:3"),
        ("1", True, "cuda:1"),  # a string id (config files) is accepted
        (None, True, "cpu"),  # TorchServe on a host without GPUs passes no gpu_id
        (0, False, "cpu"),  # a CPU build of torch, or no driver
        (-1, True, "cpu"),
    ],
)
def test_select_device(gpu_id: Any, cuda: bool, expected: str) -> None:
    assert load_handler_module().select_device(gpu_id, cuda) == expected


def test_gpu_id_without_cuda_runs_on_cpu(tmp_path: Path, model_store: Path) -> None:
    """TorchServe may hand out a gpu_id although this torch cannot use it: the worker must still start."""
    shutil.copy(model_store / "mnist" / "1" / "model.pt", tmp_path / "model.pt")
    (tmp_path / "preprocess.json").write_text(MNIST_SPEC.model_dump_json())
    module = load_handler_module()
    handler = module.MnistHandler()
    ctx = FakeContext(tmp_path)
    ctx.system_properties["gpu_id"] = 0
    handler.initialize(ctx)
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(handler.device) == expected
    x = np.zeros((2, 1, 28, 28), np.float32)
    logits = handler._forward(x)
    assert isinstance(logits, np.ndarray) and logits.shape == (2, 10) and logits.dtype == np.float32
