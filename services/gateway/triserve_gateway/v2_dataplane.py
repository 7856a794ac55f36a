"""The OIP v2 data plane's transport-neutral half: a decoded v2 request's one input as the model's
payload (FP32 rows reshaped to the model input, or BYTES encoded images), the outputs asked for,
and model metadata. The REST API (:mod:`triserve_gateway.api_v2`) and the gRPC service
(:mod:`triserve_gateway.grpc_service`) both use it.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

from triserve_common import codec, v2
from triserve_common.errors import BadRequestError
from triserve_gateway.answers import class_count, predicted_labels, softmax
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import Payload

Array = np.ndarray[Any, Any]
SERVER_NAME = "triserve-gateway"
EXTRA_OUTPUTS = ("probabilities", "label")


def _is_binary(inp: Any) -> bool:
    return bool(inp.parameters and "binary_data_size" in inp.parameters)


def images_of(name: str, arr: Array, binary: bool) -> list[bytes]:
    """The encoded images of a BYTES input (base64-decoded when it came as JSON)."""
    items = list(arr.ravel())
    if not items:
        raise BadRequestError(f"input '{name}' holds no image")
    if binary:
        return [bytes(i) for i in items]
    out = []
    for idx, item in enumerate(items):
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequestError(
                f"input '{name}' element {idx} is not base64: BYTES images in JSON must be base64 "
                "encoded (or send them raw with the binary tensor extension)"
            ) from None
    return out


def model_metadata(mv: ModelVersion, versions: list[str], backends: list[str]) -> dict[str, Any]:
    """OIP v2 model metadata as the gateway serves the model."""
    classes = class_count(mv)
    return {
        "name": mv.name,
        "versions": versions,
        "platform": SERVER_NAME,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in mv.inputs],
        "outputs": [
            *({"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in mv.outputs),
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "version": mv.version,
            "labels": mv.labels,
            "backends": backends,
            "bytes_input": "a single BYTES [N] input of encoded images (base64 in JSON, raw in binary) "
            "is preprocessed at the gateway",
            "preprocessing": mv.preprocessor.spec.model_dump(),
        },
    }


def wanted_outputs(request: v2.InferenceRequest, mv: ModelVersion) -> list[str]:
    """Names of the outputs asked for (default: the model's), 400 naming any unknown one."""
    wanted = [o.name for o in request.outputs] if request.outputs else [mv.output.name]
    known = (mv.output.name, *EXTRA_OUTPUTS)
    unknown = [o for o in wanted if o not in known]
    if unknown:
        raise BadRequestError(f"unknown output(s) {', '.join(unknown)} (outputs: {', '.join(known)})")
    return wanted


def tensor_payload(decoded: codec.DecodedRequest, mv: ModelVersion) -> Payload:
    """The one input of a v2 request as the payload: BYTES images or the model's FP32 tensor."""
    req = decoded.request
    if len(req.inputs) != 1:
        raise BadRequestError(
            f"expected exactly one input (FP32 '{mv.input.name}' {mv.input.shape} or BYTES "
            f"encoded images), got {len(req.inputs)}"
        )
    inp = req.inputs[0]
    arr = decoded.tensors[inp.name]
    wanted_outputs(req, mv)
    if inp.datatype == "BYTES":
        if arr.ndim != 1:
            raise BadRequestError(
                f"input '{inp.name}': BYTES images take shape [N] (or [-1]), got {list(arr.shape)}"
            )
        return Payload(images=images_of(inp.name, arr, _is_binary(inp)), what=f"input '{inp.name}' image")
    if inp.datatype == mv.input.datatype:
        return Payload(tensor=np.ascontiguousarray(as_model_rows(inp.name, arr, mv), dtype=np.float32))
    raise BadRequestError(
        f"input '{inp.name}' is {inp.datatype}: send {mv.input.datatype} {mv.input.shape} "
        "tensors or BYTES encoded images"
    )


def _squeezed(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def as_model_rows(name: str, arr: Array, mv: ModelVersion) -> Array:
    """``arr`` reshaped to the model input ``[N, *row]`` (see module doc); 400 when its rows are
    not the model's (one row = one image: ``[C,H,W]``, ``[H,W]`` or ``[H*W]`` of its input)."""
    row = list(mv.input.shape[1:])
    if any(d < 0 for d in row):
        return arr
    size = math.prod(row)
    images = {_squeezed(row), (size,)}
    if arr.ndim >= 2 and _squeezed(arr.shape[1:]) in images:
        return arr.reshape(arr.shape[0], *row)
    if _squeezed(arr.shape) in images:
        return arr.reshape(1, *row)
    raise BadRequestError(
        f"input '{name}': shape {list(arr.shape)} is not rows of the model's input "
        f"{mv.input.shape}: send [N, {', '.join(map(str, row))}], "
        f"[N, {', '.join(map(str, _squeezed(row)))}], [N, {size}] or one image "
        f"[{', '.join(map(str, _squeezed(row)))}]"
    )


def outputs_of(mv: ModelVersion, logits: Array, wanted: list[str]) -> dict[str, Array]:
    """The requested outputs computed from the model's logits."""
    outputs: dict[str, Array] = {}
    for out in wanted:
        if out == mv.output.name:
            outputs[out] = logits
        elif out == "probabilities":
            outputs[out] = softmax(logits).astype(np.float32)
        else:
            label_arr = np.empty(logits.shape[0], dtype=object)
            label_arr[:] = [label.encode() for label in predicted_labels(mv, logits)]
            outputs[out] = label_arr
    return outputs
