"""v2 datatypes, and validation of declared shapes and JSON tensor values before anything is allocated.

A shape comes from the client: it is checked here (rank, dims, element count) and compared with
the bytes actually received before the codec allocates a single element, so a 150-byte request
declaring ``[1000000000]`` costs nothing. JSON tensor data is strict: numeric datatypes take JSON
numbers only (no strings, booleans or null; integers for the integer types), every value must fit
the datatype, and floating-point values must be finite (``NaN``/``Infinity`` are not JSON anyway).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triserve_common.errors import BadRequestError, PayloadTooLargeError

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
            f"unsupported datatype '{datatype[:32]}' (supported: {', '.join(sorted(DATATYPES))})"
        ) from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """v2 datatype name of a numpy dtype."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for name, candidate in _NUMERIC.items():
        if candidate == dtype.newbyteorder("<") or candidate == dtype:
            return name
    raise BadRequestError(f"no v2 datatype for numpy dtype {dtype}")


MAX_RANK = 8
"""Most dimensions a tensor may have."""
DEFAULT_MAX_ELEMENTS = 1 << 26
"""Default cap on the element count a shape may declare (64 Mi elements)."""

JSON_SLACK = 64
"""JSON values a request may hold beyond its tensor data (ids, names, parameters)."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one inference request may declare, checked before it is parsed or allocated."""

    max_elements: int = DEFAULT_MAX_ELEMENTS
    """Elements of one tensor (its shape's product)."""
    max_json_values: int | None = None
    """Values in the JSON part (None: no limit beyond the body size). Python holds each parsed JSON
    value as an object of ~30-80 bytes, 10-20x its text: this keeps that in proportion to what the
    service can use."""
    setting: str = ""
    """What raises ``max_json_values`` (named in the 413)."""

    def check_json(self, text: bytes) -> None:
        """413 when ``text`` may hold more JSON values than allowed: a JSON array of n values has
        n - 1 commas, so ``commas + 1`` bounds the values (C speed, nothing allocated)."""
        if self.max_json_values is None:
            return
        bound = text.count(b",") + 1
        if bound > self.max_json_values:
            raise PayloadTooLargeError(
                f"the JSON request holds up to {bound} values, over the limit of {self.max_json_values}"
                + (f" (raised by {self.setting})" if self.setting else "")
            )


def json_limits(inputs: Sequence[Any], max_rows: int, setting: str) -> DecodeLimits:
    """The limits of a model whose inputs (``.shape`` with a leading batch dim) take at most
    ``max_rows`` rows: JSON values up to every input's full batch (no JSON limit when a non-batch
    dim is dynamic)."""
    per_row = 0
    for spec in inputs:
        dims = list(spec.shape[1:])
        if any(d < 0 for d in dims):
            return DecodeLimits()
        per_row += math.prod(dims)
    return DecodeLimits(max_json_values=max_rows * per_row + JSON_SLACK, setting=setting)


WILDCARD = -1
"""A leading ``-1`` dimension: "as many as the data holds" (KServe clients send BYTES ``[-1]``)."""

_INT_KINDS = "iu"


def _dims_of(name: str, shape: Sequence[Any]) -> list[int]:
    if len(shape) > MAX_RANK:
        raise BadRequestError(
            f"input '{name}': shape has {len(shape)} dimensions, at most {MAX_RANK} are allowed"
        )
    dims = list(shape)
    for i, dim in enumerate(dims):
        if type(dim) is not int:
            raise BadRequestError(f"input '{name}': shape {dims} has a non-integer dimension at {i}")
        if dim < 0 and not (i == 0 and dim == WILDCARD):
            raise BadRequestError(
                f"input '{name}': shape {dims} has a negative dimension "
                "(only a leading -1 is allowed, meaning 'as many as the data holds')"
            )
    return dims


def _check_count(name: str, dims: Sequence[int], max_elements: int) -> int:
    count = math.prod(dims)
    if count > max_elements:
        raise PayloadTooLargeError(
            f"input '{name}': shape {list(dims)} declares {count} elements, over the limit of "
            f"{max_elements}"
        )
    return count


def check_shape(name: str, shape: Sequence[Any], max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """Element count of a fully specified ``shape`` (rank, dims ≥ 0, count ≤ ``max_elements``)."""
    dims = _dims_of(name, shape)
    if dims and dims[0] == WILDCARD:
        raise BadRequestError(f"input '{name}': shape {dims} must be fully specified here (no -1)")
    return _check_count(name, dims, max_elements)


def resolve_shape(
    name: str, shape: Sequence[Any], available: int, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> list[int]:
    """``shape`` with a leading ``-1`` replaced by what ``available`` elements allow.

    ``available`` is the element count the data actually holds (JSON items, or binary bytes divided
    by the element size). Raises 400 naming both when they cannot agree.
    """
    dims = _dims_of(name, shape)
    if not dims or dims[0] != WILDCARD:
        _check_count(name, dims, max_elements)
        return dims
    inner = _check_count(name, dims[1:], max_elements)
    if inner == 0 or available % inner:
        raise BadRequestError(
            f"input '{name}': shape {dims} cannot hold the {available} elements received "
            f"(not a multiple of {inner})"
        )
    resolved = [available // inner, *dims[1:]]
    _check_count(name, resolved, max_elements)
    return resolved


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value[:20]!r}"
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return f"{type(value).__name__} {value!r}"[:40]


def _allowed_types(dtype: np.dtype[Any]) -> tuple[type, ...]:
    if dtype.kind == "b":
        return (bool,)
    if dtype.kind in _INT_KINDS:
        return (int,)
    return (int, float)


def numeric_from_json(name: str, datatype: str, dtype: np.dtype[Any], flat: list[Any]) -> np.ndarray:
    """1-D array of JSON values ``flat`` as ``dtype``, refusing anything but fitting JSON numbers."""
    allowed = _allowed_types(dtype)
    if not set(map(type, flat)) <= set(allowed):
        idx, bad = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
        wanted = "JSON booleans" if dtype.kind == "b" else (
            "JSON integers" if dtype.kind in _INT_KINDS else "JSON numbers"
        )
        raise BadRequestError(
            f"input '{name}': {datatype} data must be {wanted}; element {idx} is {_describe(bad)}"
        )
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise BadRequestError(f"input '{name}': a value does not fit {datatype}: {exc}") from None
    if dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            idx = int(np.argmin(finite))
            raise BadRequestError(
                f"input '{name}': {datatype} data must be finite numbers that fit {datatype}; "
                f"element {idx} ({flat[idx]!r}) is not"
            )
    return arr


def reject_json_constant(token: str) -> Any:
    """``json.loads(parse_constant=...)``: refuse ``NaN``, ``Infinity`` and ``-Infinity``."""
    raise BadRequestError(
        f"request body is not valid JSON: '{token}' is not a JSON value "
        "(tensor data must be finite JSON numbers)"
    )
