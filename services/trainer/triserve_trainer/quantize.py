"""INT8 post-training static quantisation of an FP32 version's artifacts.

* ONNX Runtime: ``quantize_static`` in QDQ format (int8 weights per channel, uint8 activations),
  calibrated with MinMax on training images.
* TorchServe: eager-mode ``torch.ao.quantization`` (``x86`` backend, fbgemm kernels) of the same network
  rebuilt from the FP32 version's ONNX weights (BatchNorm already folded into the convolutions), conv+ReLU
  and linear+ReLU fused, calibrated on the same images, traced to TorchScript.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.ao import quantization as tq

TORCH_ENGINE = "x86"


class FoldedConvNet(nn.Module):
    """:class:`~triserve_trainer.model.ConvNet` with BatchNorm folded into the convolutions, quantisable."""

    def __init__(self, widths: tuple[int, int, int, int], hidden: int, classes: int) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()
        self.conv1, self.relu1 = nn.Conv2d(1, w1, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU()
        self.conv4, self.relu4 = nn.Conv2d(w3, w4, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.relu5 = nn.Linear(w4 * 9, hidden), nn.ReLU()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        x = self.pool(self.relu3(self.conv3(x)))
        x = self.pool(self.relu4(self.conv4(x)))
        x = torch.flatten(x, 1)
        x = self.relu5(self.fc1(x))
        out: torch.Tensor = self.dequant(self.fc2(x))
        return out

    FUSE = [["conv1", "relu1"], ["conv2", "relu2"], ["conv3", "relu3"], ["conv4", "relu4"], ["fc1", "relu5"]]


def folded_from_onnx(onnx_path: Path) -> FoldedConvNet:
    """The FP32 network with the weights of an exported ``model.onnx`` (names as torch.onnx writes them)."""
    import onnx
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    widths = tuple(int(weights[f"conv{i}.weight"].shape[0]) for i in range(1, 5))
    hidden, classes = (int(weights[f"fc{i}.weight"].shape[0]) for i in (1, 2))
    net = FoldedConvNet(widths, hidden, classes)  # type: ignore[arg-type]
    state = {}
    for i in range(1, 5):
        state[f"conv{i}.weight"] = weights[f"conv{i}.weight"]
        state[f"conv{i}.bias"] = weights[f"conv{i}.weight_bias"]
    for i in (1, 2):
        state[f"fc{i}.weight"] = weights[f"fc{i}.weight"]
        state[f"fc{i}.bias"] = weights[f"fc{i}.bias"]
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return net.eval()


def quantize_torch(
    net: FoldedConvNet, calibration: npt.NDArray[np.float32], out: Path, batch: int = 250
) -> Path:
    """Static INT8 (x86/fbgemm) TorchScript of ``net`` calibrated on ``calibration`` → ``out``."""
    torch.backends.quantized.engine = TORCH_ENGINE
    model = copy.deepcopy(net).eval()
    model = tq.fuse_modules(model, FoldedConvNet.FUSE)  # type: ignore[no-untyped-call]
    model.qconfig = tq.get_default_qconfig(TORCH_ENGINE)  # type: ignore[no-untyped-call]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = tq.prepare(model)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            for i in range(0, len(calibration), batch):
                prepared(torch.from_numpy(calibration[i : i + batch]))
        quantized = tq.convert(prepared)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            scripted = torch.jit.trace(quantized, torch.zeros(2, *calibration.shape[1:]))  # type: ignore[no-untyped-call]
            scripted = torch.jit.freeze(scripted)
    out.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(out))
    return out


class _Calibration:
    """onnxruntime's CalibrationDataReader over a float32 array, in batches."""

    def __init__(self, x: npt.NDArray[np.float32], batch: int = 100) -> None:
        self._batches = iter([x[i : i + batch] for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, Any] | None:
        chunk = next(self._batches, None)
        return None if chunk is None else {"input": np.ascontiguousarray(chunk)}


def quantize_onnx(fp32: Path, calibration: npt.NDArray[np.float32], out: Path, work: Path) -> Path:
    """ONNX Runtime static quantisation, QDQ format, per-channel int8 weights, uint8 activations."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    work.mkdir(parents=True, exist_ok=True)
    pre = work / "preprocessed.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def quantization_methods() -> dict[str, str]:
    """How each backend's INT8 artifact is made (recorded in the manifest)."""
    return {
        "onnx": "onnxruntime.quantization.quantize_static: QDQ, per-channel symmetric int8 weights, "
        "uint8 activations, MinMax calibration",
        "torchserve": f"torch.ao.quantization eager static ({TORCH_ENGINE} engine, fbgemm kernels): "
        "conv+relu / linear+relu fused, per-channel int8 weights, HistogramObserver uint8 activations "
        "(reduce_range), frozen TorchScript",
    }
