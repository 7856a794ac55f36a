"""Tensor codec for OIP v2: JSON tensors and the binary tensor data extension.

Binary mode (Triton/KServe "binary tensor data" extension): the body is a JSON header
followed by raw little-endian tensor bytes, and ``Inference-Header-Content-Length`` gives
the header's length. Each binary input/output carries ``parameters.binary_data_size``.
BYTES elements are 4-byte little-endian length prefixed in binary mode.

Used by the runtime services (server side) and the gateway (client side).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from triserve_common.errors import BadRequestError, UnprocessableError
from triserve_common.tensor_checks import DATATYPES as DATATYPES
from triserve_common.tensor_checks import (
    DEFAULT_MAX_ELEMENTS,
    MAX_RANK,
    WILDCARD,
    DecodeLimits,
    check_shape,
    numeric_from_json,
    reject_json_constant,
    resolve_shape,
)
from triserve_common.tensor_checks import numpy_dtype as numpy_dtype
from triserve_common.tensor_checks import v2_datatype as v2_datatype
from triserve_common.v2 import InferenceRequest, RequestInput

HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_LIMITS = DecodeLimits()
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

# ---------------------------------------------------------------- BYTES helpers


def pack_bytes(items: Sequence[bytes]) -> bytes:
    """Serialize BYTES elements: 4-byte little-endian length + content, each."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def unpack_bytes(buf: memoryview | bytes, count: int | None, name: str) -> list[bytes]:
    """Parse ``count`` length-prefixed BYTES elements from ``buf`` (``None``: as many as it holds).

    Callers check ``count * 4 <= len(buf)`` first: the list never outgrows the bytes received.
    """
    view = memoryview(buf)
    items: list[bytes] = []
    offset = 0
    while (count is None and offset < len(view)) or (count is not None and len(items) < count):
        if offset + 4 > len(view):
            raise BadRequestError(f"input '{name}': binary BYTES data truncated")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise BadRequestError(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes, "
                f"only {len(view) - offset} left"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise BadRequestError(f"input '{name}': {len(view) - offset} trailing bytes after BYTES data")
    return items


# ---------------------------------------------------------------- decoding (server side)


def _flatten(name: str, data: Any, depth: int = 0) -> list[Any]:
    if depth > MAX_RANK:
        raise BadRequestError(f"input '{name}': data nested deeper than {MAX_RANK} levels")
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(name, item, depth + 1))
        return out
    return data


def tensor_from_json(inp: RequestInput, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    """numpy array of a JSON-encoded input (flat or nested ``data``), strictly typed (see shapes)."""
    if inp.data is None:
        raise BadRequestError(f"input '{inp.name}' has no data")
    flat = _flatten(inp.name, inp.data)
    shape = resolve_shape(inp.name, inp.shape, len(flat), max_elements)
    count = math.prod(shape)
    if len(flat) != count:
        raise BadRequestError(
            f"input '{inp.name}': shape {inp.shape} needs {count} elements, data has {len(flat)}"
        )
    if inp.datatype == "BYTES":
        if not all(type(v) is str for v in flat):
            idx = next(i for i, v in enumerate(flat) if type(v) is not str)
            raise BadRequestError(
                f"input '{inp.name}': BYTES data must be JSON strings (element {idx} is not)"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = [v.encode() for v in flat]
        return arr.reshape(shape)
    dtype = numpy_dtype(inp.datatype)
    return numeric_from_json(inp.name, inp.datatype, dtype, flat).reshape(shape)


def tensor_from_binary(
    inp: RequestInput, buf: memoryview, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> np.ndarray:
    """numpy array of a binary input whose raw bytes are ``buf`` (zero-copy for numerics).

    The declared shape is checked against ``len(buf)`` before anything is allocated.
    """
    if inp.datatype == "BYTES":
        dims = inp.shape
        if dims and dims[0] == WILDCARD:
            items = unpack_bytes(buf, None, inp.name)  # at most len(buf) // 4 elements
            shape = resolve_shape(inp.name, dims, len(items), max_elements)
        else:
            count = check_shape(inp.name, dims, max_elements)
            if count * 4 > len(buf):
                raise BadRequestError(
                    f"input '{inp.name}': shape {list(dims)} declares {count} BYTES elements, which "
                    f"need at least {count * 4} bytes (4-byte length each); binary data has {len(buf)}"
                )
            items = unpack_bytes(buf, count, inp.name)
            shape = list(dims)
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = numpy_dtype(inp.datatype)
    if len(buf) % dtype.itemsize:
        raise BadRequestError(
            f"input '{inp.name}': {len(buf)} bytes of binary data is not a whole number of "
            f"{inp.datatype} elements ({dtype.itemsize} bytes each)"
        )
    shape = resolve_shape(inp.name, inp.shape, len(buf) // dtype.itemsize, max_elements)
    expected = math.prod(shape) * dtype.itemsize
    if len(buf) != expected:
        raise BadRequestError(
            f"input '{inp.name}': shape {inp.shape} {inp.datatype} needs {expected} bytes, "
            f"binary data has {len(buf)}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


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
    if not inp.parameters or "binary_data_size" not in inp.parameters:
        return None
    size = inp.parameters["binary_data_size"]
    if type(size) is not int or size < 0:
        raise BadRequestError(f"input '{inp.name}': binary_data_size must be a non-negative integer")
    return size


def _flag(params: dict[str, Any] | None, key: str, where: str) -> bool:
    value = (params or {}).get(key, False)
    if type(value) is not bool:
        raise BadRequestError(f"{where}parameters.{key} must be true or false, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    return json.dumps(value)[:40] if isinstance(value, (str, int, float, list, dict)) else repr(value)[:40]


def parse_header_length(value: str | None) -> int | None:
    """Parse the ``Inference-Header-Content-Length`` header value."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise BadRequestError(f"{HEADER_LENGTH} must be an integer, got '{value[:40]}'") from None
    if length < 0:
        raise BadRequestError(f"{HEADER_LENGTH} must not be negative")
    return length


def _parse_header(header: bytes) -> InferenceRequest:
    try:
        raw = json.loads(header, parse_constant=reject_json_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("request body is not valid JSON: nested too deeply") from None
    try:
        return InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise BadRequestError(f"invalid inference request: {detail}") from None


def decode_request(
    body: bytes, header_length: int | None, limits: DecodeLimits = DEFAULT_LIMITS
) -> DecodedRequest:
    """Parse an inference request body, JSON or binary (``header_length`` set).

    Strict: the JSON's value count is bounded before parsing, shapes are checked (rank, dims,
    ``limits.max_elements``) and compared with the data received before allocating; JSON numbers
    only for numeric data; floating-point inputs must be finite.
    """
    max_elements = limits.max_elements
    if header_length is not None and header_length > len(body):
        raise BadRequestError(
            f"{HEADER_LENGTH} ({header_length}) is larger than the body ({len(body)} bytes)"
        )
    header = body if header_length is None else body[:header_length]
    limits.check_json(header)
    request = _parse_header(header)
    view = memoryview(body)
    offset = len(header)
    tensors: dict[str, np.ndarray] = {}
    for inp in request.inputs:
        if inp.name in tensors:
            raise BadRequestError(f"input '{inp.name}' given more than once")
        numpy_dtype(inp.datatype)  # 400 on an unknown datatype, before looking at the data
        size = _binary_size(inp)
        if size is None:
            tensors[inp.name] = tensor_from_json(inp, max_elements)
            continue
        if inp.data is not None:
            raise BadRequestError(f"input '{inp.name}' has both data and binary_data_size")
        if header_length is None:
            raise BadRequestError(
                f"input '{inp.name}' has binary_data_size but the request has no {HEADER_LENGTH} header"
            )
        if offset + size > len(body):
            raise BadRequestError(
                f"input '{inp.name}': binary data truncated: binary_data_size {size} runs past the end "
                f"of the body ({len(body) - offset} bytes left)"
            )
        arr = tensor_from_binary(inp, view[offset : offset + size], max_elements)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadRequestError(f"input '{inp.name}': {inp.datatype} data must be finite (no NaN/Inf)")
        tensors[inp.name] = arr
        offset += size
    if offset != len(body):
        raise BadRequestError(f"{len(body) - offset} bytes after the last binary input")
    binary_default = _flag(request.parameters, "binary_data_output", "")
    binary_outputs = {
        out.name
        for out in request.outputs or []
        if _flag(out.parameters, "binary_data", f"output '{out.name}' ")
    }
    return DecodedRequest(request, tensors, binary_outputs, binary_default)


# ---------------------------------------------------------------- encoding


def tensor_bytes(arr: np.ndarray) -> bytes:
    """A tensor's raw data: little-endian, row-major; BYTES elements length prefixed."""
    if arr.dtype == object:
        return pack_bytes([v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel()])
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _json_data(name: str, arr: np.ndarray) -> list[Any]:
    if arr.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise UnprocessableError(
            f"output '{name}' holds NaN/Inf, which JSON cannot carry: the inputs are outside the "
            "model's range (ask for binary_data outputs to receive the raw values)"
        )
    data: list[Any] = arr.ravel().tolist()
    return data


def _encode(
    head: dict[str, Any], key: str, tensors: Sequence[tuple[dict[str, Any], np.ndarray, bool]]
) -> tuple[bytes, dict[str, str]]:
    chunks: list[bytes] = []
    entries = []
    for entry, arr, binary in tensors:
        if binary:
            raw = tensor_bytes(arr)
            entry["parameters"] = {**entry.get("parameters", {}), "binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(entry["name"], arr)
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
