"""Paddle Inference export: the same network in ``paddle.nn`` with the torch weights copied over."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triserve_trainer.model import MNIST_HIDDEN, MNIST_WIDTHS, ConvNet

log = logging.getLogger(__name__)

PADDLE_MODEL_FILE = "inference.json"
PADDLE_PARAMS_FILE = "inference.pdiparams"


def build_paddle_net(
    widths: tuple[int, int, int, int] = MNIST_WIDTHS, hidden: int = MNIST_HIDDEN, classes: int = 10
) -> Any:
    """``paddle.nn.Layer`` mirroring :class:`ConvNet` (same attribute names and widths)."""
    import paddle
    from paddle import nn

    w1, w2, w3, w4 = widths

    class PaddleConvNet(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2D(1, w1, 3, padding=1, bias_attr=False)
            self.bn1 = nn.BatchNorm2D(w1)
            self.conv2 = nn.Conv2D(w1, w2, 3, padding=1, bias_attr=False)
            self.bn2 = nn.BatchNorm2D(w2)
            self.conv3 = nn.Conv2D(w2, w3, 3, padding=1, bias_attr=False)
            self.bn3 = nn.BatchNorm2D(w3)
            self.conv4 = nn.Conv2D(w3, w4, 3, padding=1, bias_attr=False)
            self.bn4 = nn.BatchNorm2D(w4)
            self.pool = nn.MaxPool2D(2)
            self.fc1 = nn.Linear(w4 * 3 * 3, hidden)
            self.dropout = nn.Dropout(0.25)
            self.fc2 = nn.Linear(hidden, classes)

        def forward(self, x: Any) -> Any:
            relu = paddle.nn.functional.relu
            x = self.pool(relu(self.bn1(self.conv1(x))))
            x = relu(self.bn2(self.conv2(x)))
            x = self.pool(relu(self.bn3(self.conv3(x))))
            x = self.pool(relu(self.bn4(self.conv4(x))))
            x = paddle.flatten(x, 1)
            x = self.dropout(relu(self.fc1(x)))
            return self.fc2(x)

    return PaddleConvNet()


def torch_to_paddle_state(model: ConvNet) -> dict[str, np.ndarray]:
    """Map torch's state dict to Paddle names; Linear weights transposed ([out,in] → [in,out])."""
    out: dict[str, np.ndarray] = {}
    linear = {name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        mod_name, _, leaf = key.rpartition(".")
        arr = tensor.detach().cpu().numpy().astype(np.float32)
        if mod_name in linear and leaf == "weight":
            arr = arr.T.copy()
        leaf = {"running_mean": "_mean", "running_var": "_variance"}.get(leaf, leaf)
        out[f"{mod_name}.{leaf}"] = arr
    return out


def export_paddle(model: ConvNet, out_dir: Path) -> list[Path]:
    """``out_dir/inference.{json,pdiparams}`` via ``paddle.jit.save``; input named ``input``."""
    import paddle

    paddle.device.set_device("cpu")
    net = build_paddle_net(model.widths, model.hidden, model.classes)
    state = torch_to_paddle_state(model)
    expected = set(net.state_dict().keys())
    if expected != set(state):
        raise ValueError(f"paddle/torch parameter names differ: {sorted(expected ^ set(state))}")
    for name, value in net.state_dict().items():
        if list(value.shape) != list(state[name].shape):
            raise ValueError(f"{name}: paddle shape {value.shape} vs torch {state[name].shape}")
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    net.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = [paddle.static.InputSpec(shape=[None, 1, 28, 28], dtype="float32", name="input")]
    static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(out_dir / "inference"), input_spec=spec)
    files = [out_dir / PADDLE_MODEL_FILE, out_dir / PADDLE_PARAMS_FILE]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise RuntimeError(f"paddle.jit.save did not write {missing} (found {sorted(os.listdir(out_dir))})")
    return files
