"""Tensor codec for OIP v2: JSON tensors and the binary tensor data extension.

Binary mode (Triton/KServe "binary tensor data" extension): the body is a JSON header
followed by raw little-endian tensor bytes, and ``Inference-Header-Content-Length`` gives
the header's length. Each binary input/output carries ``parameters.binary_data_size``.
BYTES elements are 4-byte little-endian length prefixed in binary mode.

Used by the runtime services (server side) and the gateway (client side).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from triserve_common.errors import BadRequestError
from triserve_common.v2 import InferenceRequest, RequestInput

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

_NUMERIC: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES: frozenset[str] = frozenset([*_NUMERIC, "BYTES"])


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """numpy dtype of a numeric v2 datatype (BYTES → object)."""
    if datatype == "BYTES":
        return np.dtype(object)
    try:
        return _NUMERIC[datatype]
    except KeyError:
        raise BadRequestError(
            f"unsupported datatype '{datatype}' (supported: {', '.join(sorted(DATATYPES))})"
        ) from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """v2 datatype name of a numpy dtype."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for name, candidate in _NUMERIC.items():
        if candidate == dtype.newbyteorder("<") or candidate == dtype:
            return name
    raise BadRequestError(f"no v2 datatype for numpy dtype {dtype}")


def _element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise BadRequestError(f"shape {list(shape)} has a negative dimension")
        count *= dim
    return count


# ---------------------------------------------------------------- BYTES helpers


def pack_bytes(items: Sequence[bytes]) -> bytes:
    """Serialize BYTES elements: 4-byte little-endian length + content, each."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def unpack_bytes(buf: memoryview | bytes, count: int, name: str) -> list[bytes]:
    """Parse ``count`` length-prefixed BYTES elements from ``buf``."""
    view = memoryview(buf)
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(view):
            raise BadRequestError(f"input '{name}': binary BYTES data truncated")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise BadRequestError(f"input '{name}': binary BYTES element truncated")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise BadRequestError(f"input '{name}': {len(view) - offset} trailing bytes after BYTES data")
    return items


# ---------------------------------------------------------------- decoding (server side)


def _flatten(data: Any, depth: int = 0) -> list[Any]:
    if depth > 32:
        raise BadRequestError("tensor data nested deeper than 32 levels")
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item, depth + 1))
        return out
    return data


def tensor_from_json(inp: RequestInput) -> np.ndarray:
    """numpy array of a JSON-encoded input (flat or nested ``data``)."""
    if inp.data is None:
        raise BadRequestError(f"input '{inp.name}' has no data")
    count = _element_count(inp.shape)
    flat = _flatten(inp.data)
    if len(flat) != count:
        raise BadRequestError(
            f"input '{inp.name}': shape {inp.shape} needs {count} elements, data has {len(flat)}"
        )
    if inp.datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else v for v in flat]
        if not all(isinstance(v, bytes) for v in items):
            raise BadRequestError(f"input '{inp.name}': BYTES data must be strings")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(inp.shape)
    dtype = numpy_dtype(inp.datatype)
    try:
        return np.asarray(flat, dtype=dtype).reshape(inp.shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequestError(f"input '{inp.name}': data is not {inp.datatype}: {exc}") from None


def tensor_from_binary(inp: RequestInput, buf: memoryview) -> np.ndarray:
    """numpy array of a binary input whose raw bytes are ``buf`` (zero-copy for numerics)."""
    count = _element_count(inp.shape)
    if inp.datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = unpack_bytes(buf, count, inp.name)
        return arr.reshape(inp.shape)
    dtype = numpy_dtype(inp.datatype)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise BadRequestError(
            f"input '{inp.name}': shape {inp.shape} {inp.datatype} needs {expected} bytes, "
            f"binary data has {len(buf)}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(inp.shape)


@dataclass
class DecodedRequest:
    """An inference request with its inputs as numpy arrays."""

    request: InferenceRequest
    tensors: dict[str, np.ndarray]
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False

    def wants_binary(self, output: str) -> bool:
        """Whether ``output`` should be answered as binary data."""
        return output in self.binary_outputs or self.binary_default


def _binary_size(inp: RequestInput) -> int | None:
    if not inp.parameters:
        return None
    size = inp.parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequestError(f"input '{inp.name}': binary_data_size must be a non-negative integer")
    return size


def parse_header_length(value: str | None) -> int | None:
    """Parse the ``Inference-Header-Content-Length`` header value."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise BadRequestError(f"{HEADER_LENGTH} must be an integer, got '{value}'") from None
    if length < 0:
        raise BadRequestError(f"{HEADER_LENGTH} must not be negative")
    return length


def decode_request(body: bytes, header_length: int | None) -> DecodedRequest:
    """Parse an inference request body, JSON or binary (``header_length`` set)."""
    if header_length is not None and header_length > len(body):
        raise BadRequestError(
            f"{HEADER_LENGTH} ({header_length}) is larger than the body ({len(body)} bytes)"
        )
    header = body if header_length is None else body[:header_length]
    try:
        raw = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("request body is not valid JSON: nested too deeply") from None
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequestError(f"invalid inference request: {detail}") from None

    view = memoryview(body)
    offset = len(header)
    tensors: dict[str, np.ndarray] = {}
    for inp in request.inputs:
        if inp.name in tensors:
            raise BadRequestError(f"input '{inp.name}' given more than once")
        size = _binary_size(inp)
        if size is None:
            tensors[inp.name] = tensor_from_json(inp)
            continue
        if header_length is None:
            raise BadRequestError(
                f"input '{inp.name}' has binary_data_size but the request has no {HEADER_LENGTH} header"
            )
        if offset + size > len(body):
            raise BadRequestError(f"input '{inp.name}': binary data truncated")
        tensors[inp.name] = tensor_from_binary(inp, view[offset : offset + size])
        offset += size
    if offset != len(body):
        raise BadRequestError(f"{len(body) - offset} bytes after the last binary input")

    params = request.parameters or {}
    binary_default = bool(params.get("binary_data_output", False))
    binary_outputs = {
        out.name
        for out in request.outputs or []
        if out.parameters and out.parameters.get("binary_data", False)
    }
    return DecodedRequest(request, tensors, binary_outputs, binary_default)


# ---------------------------------------------------------------- encoding


def _tensor_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype == object:
        return pack_bytes([v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel()])
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _json_data(arr: np.ndarray) -> list[Any]:
    if arr.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
    data: list[Any] = arr.ravel().tolist()
    return data


def _encode(
    head: dict[str, Any], key: str, tensors: Sequence[tuple[dict[str, Any], np.ndarray, bool]]
) -> tuple[bytes, dict[str, str]]:
    chunks: list[bytes] = []
    entries = []
    for entry, arr, binary in tensors:
        if binary:
            raw = _tensor_bytes(arr)
            entry["parameters"] = {**entry.get("parameters", {}), "binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(arr)
        entries.append(entry)
    head[key] = entries
    header = json.dumps(head, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": JSON_CONTENT_TYPE}
    return header + b"".join(chunks), {
        "content-type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(header)),
    }


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: set[str] | bool = False,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an inference response; ``binary`` = all outputs or a set of names."""
    head: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        head["model_version"] = model_version
    if request_id is not None:
        head["id"] = request_id
    if parameters:
        head["parameters"] = dict(parameters)
    items = [
        (
            {"name": name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)},
            arr,
            binary if isinstance(binary, bool) else name in binary,
        )
        for name, arr in outputs.items()
    ]
    return _encode(head, "outputs", items)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] = (),
    binary: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an inference request (client side); binary inputs and outputs by default."""
    head: dict[str, Any] = {}
    if request_id is not None:
        head["id"] = request_id
    if outputs:
        head["outputs"] = [
            {"name": name, "parameters": {"binary_data": True}} if binary else {"name": name}
            for name in outputs
        ]
    elif binary:
        head["parameters"] = {"binary_data_output": True}
    items = [
        ({"name": name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}, arr, binary)
        for name, arr in inputs.items()
    ]
    return _encode(head, "inputs", items)


@dataclass
class DecodedResponse:
    """An inference response with its outputs as numpy arrays."""

    model_name: str
    model_version: str | None
    request_id: str | None
    outputs: dict[str, np.ndarray]


def decode_response(body: bytes, header_length: int | None) -> DecodedResponse:
    """Parse an inference response body, JSON or binary (client side)."""
    header = body if header_length is None else body[:header_length]
    try:
        head = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"response is not valid JSON: {exc}") from None
    view = memoryview(body)
    offset = len(header)
    outputs: dict[str, np.ndarray] = {}
    for raw in head.get("outputs", []):
        out = RequestInput.model_validate(raw)
        size = _binary_size(out)
        if size is None:
            outputs[out.name] = tensor_from_json(out)
        else:
            outputs[out.name] = tensor_from_binary(out, view[offset : offset + size])
            offset += size
    return DecodedResponse(head.get("model_name", ""), head.get("model_version"), head.get("id"), outputs)
