"""TorchScript and ONNX exports of the trained network."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch

from triserve_trainer.specs import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

ONNX_OPSET = 18


def export_torchscript(model: torch.nn.Module, path: Path) -> Path:
    """Trace the eval-mode model to TorchScript (``model.pt``)."""
    model = copy.deepcopy(model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(model, torch.zeros(2, 1, 28, 28))  # type: ignore[no-untyped-call]
        scripted = torch.jit.freeze(scripted)
    scripted.save(str(path))
    return path


def export_onnx(model: torch.nn.Module, path: Path, opset: int = ONNX_OPSET) -> Path:
    """ONNX: input ``input`` [-1,1,28,28] float32, output ``logits`` [-1,10]; checked by onnx.checker."""

    model = copy.deepcopy(model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 28, 28),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
            verbose=False,
        )
    check_onnx(path, opset)
    return path


def check_onnx(path: Path, min_opset: int = 17) -> None:
    """onnx.checker (full) + our I/O contract; raises ValueError naming the file."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < min_opset:
        raise ValueError(f"{path}: opset {opset} < {min_opset}")
    ins = [
        (i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
        for i in proto.graph.input
    ]
    outs = [
        (o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
        for o in proto.graph.output
    ]
    if (
        len(ins) != 1
        or ins[0][0] != INPUT_NAME
        or ins[0][1][1:] != [1, 28, 28]
        or not isinstance(ins[0][1][0], str)
    ):
        raise ValueError(f"{path}: input is {ins}, expected {INPUT_NAME} [batch,1,28,28]")
    if (
        len(outs) != 1
        or outs[0][0] != OUTPUT_NAME
        or outs[0][1][1:] != [10]
        or not isinstance(outs[0][1][0], str)
    ):
        raise ValueError(f"{path}: output is {outs}, expected {OUTPUT_NAME} [batch,10]")
    elem = proto.graph.input[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ValueError(f"{path}: input element type {elem}, expected float32")
