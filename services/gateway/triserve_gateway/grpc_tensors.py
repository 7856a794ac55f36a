"""KServe v2 gRPC messages ↔ the gateway's OIP v2 data plane (no gRPC calls here).

A ``ModelInferRequest`` becomes the :class:`~triserve_common.codec.DecodedRequest` the REST
endpoint builds from its body, so that both protocols share one validation and one payload path
(:func:`triserve_gateway.v2_dataplane.tensor_payload`). Every input's data — ``raw_input_contents`` (one
entry per input, in order) or the typed ``contents`` field of its datatype — is decoded by the
codec's binary tensor reader (:func:`~triserve_common.codec.tensor_from_binary`): shapes and sizes
are checked before anything is allocated, BYTES raw data is 4-byte length prefixed (as Triton's and
KServe's clients send it), floating-point data must be finite.

Answers carry ``raw_output_contents`` (as Triton answers; FP32 little-endian, BYTES length
prefixed), or typed ``contents`` when the request sent its inputs as typed contents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from triserve_common.codec import DecodedRequest, pack_bytes, tensor_bytes, tensor_from_binary
from triserve_common.errors import BadRequestError
from triserve_common.tensor_checks import DecodeLimits, numpy_dtype, v2_datatype
from triserve_common.v2 import InferenceRequest, RequestInput, RequestOutput
from triserve_gateway.proto import grpc_predict_v2_pb2 as pb

Array = np.ndarray[Any, Any]

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The ``InferTensorContents`` field of each datatype (FP16/BF16 have none: raw contents only)."""


def parameters_of(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameter map as plain values (unset parameters left out)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def _contents_bytes(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """The typed contents of ``tensor`` as raw little-endian bytes (BYTES: length prefixed)."""
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequestError(f"input '{name}': {datatype} data can only be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if not values and tensor.contents.ByteSize():
        raise BadRequestError(
            f"input '{name}' is {datatype}: its data goes in contents.{field} (or raw_input_contents)"
        )
    if datatype == "BYTES":
        return pack_bytes(list(values))
    dtype = numpy_dtype(datatype)
    try:
        arr = np.fromiter(values, dtype=dtype, count=len(values))
    except (OverflowError, ValueError, TypeError):
        raise BadRequestError(f"input '{name}': a value of contents.{field} is not {datatype}") from None
    return arr.astype(dtype.newbyteorder("<"), copy=False).tobytes()


def decode_infer_request(request: pb.ModelInferRequest, limits: DecodeLimits) -> DecodedRequest:
    """The request as the REST endpoint decodes its body (module doc); 400 naming what is wrong."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs "
            "(one per input, in the order of 'inputs')"
        )
    inputs: list[RequestInput] = []
    tensors: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in tensors:
            raise BadRequestError(f"input '{name}' given more than once")
        numpy_dtype(tensor.datatype)  # 400 on an unknown datatype, before looking at the data
        if raw and tensor.HasField("contents"):
            raise BadRequestError(f"input '{name}' has contents while the request uses raw_input_contents")
        data = raw[index] if raw else _contents_bytes(tensor)
        params = {**parameters_of(tensor.parameters), "binary_data_size": len(data)}  # raw bytes, not base64
        inp = RequestInput(name=name, shape=list(tensor.shape), datatype=tensor.datatype, parameters=params)
        arr = tensor_from_binary(inp, memoryview(data), limits.max_elements)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadRequestError(f"input '{name}': {tensor.datatype} data must be finite (no NaN/Inf)")
        inputs.append(inp)
        tensors[name] = arr
    outputs = [
        RequestOutput(name=o.name, parameters=parameters_of(o.parameters) or None) for o in request.outputs
    ]
    decoded = InferenceRequest(
        id=request.id or None,
        parameters=parameters_of(request.parameters) or None,
        inputs=inputs,
        outputs=outputs or None,
    )
    return DecodedRequest(decoded, tensors)


def infer_response(
    model: str, version: str, request_id: str, outputs: Mapping[str, Array], raw: bool
) -> pb.ModelInferResponse:
    """The answer holding ``outputs``: in ``raw_output_contents``, or typed ``contents`` unless ``raw``."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name, arr in outputs.items():
        datatype = v2_datatype(arr.dtype)
        out = response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if raw:
            response.raw_output_contents.append(tensor_bytes(arr))
        elif datatype == "BYTES":
            out.contents.bytes_contents.extend(_raw_items(arr))
        else:
            getattr(out.contents, CONTENTS_FIELD[datatype]).extend(arr.ravel().tolist())
    return response


def _raw_items(arr: Array) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel()]


def metadata_response(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """A model's OIP v2 metadata (:func:`triserve_gateway.v2_dataplane.model_metadata`) as the gRPC message
    (which has no ``parameters``)."""
    response = pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for key in ("inputs", "outputs"):
        for t in metadata[key]:
            getattr(response, key).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return response
