"""Corpus categories about the OIP v2 request: malformed and deeply nested JSON, every field
missing or of the wrong type, huge and lying shapes (JSON and binary), wrong datatypes,
NaN/Inf/strings in FP32 data and binary header lengths that lie."""

from __future__ import annotations

import copy
import json
import struct
from typing import Any

import numpy as np

from tests.hostile.cases import INFER, Case
from triserve_common import codec

WRONG_VALUES: tuple[Any, ...] = (None, True, 7, 1.5, "x", [], {})


def fp32_request(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }


def post(category: str, name: str, body: bytes, headers: dict[str, str] | None = None, **kw: Any) -> Case:
    return Case(category, name, "POST", INFER, body, headers or {}, **kw)


def malformed_json(x: np.ndarray) -> list[Case]:
    good = json.dumps(fp32_request(x)).encode()
    bodies = {
        "empty": b"",
        "null": b"null",
        "array": b"[1, 2]",
        "number": b"123",
        "string": b'"inputs"',
        "cut in half": good[: len(good) // 2],
        "cut before the end": good[:-1],
        "trailing garbage": good + b"}}",
        "not UTF-8": b'{"inputs": [{"name": "\xff\xfe"}]}',
        "UTF-16 with BOM": '{"inputs": 1}'.encode("utf-16"),
        "NUL bytes": b"\0" * 100,
        "single quotes": b"{'inputs': []}",
        "comment": b'{"inputs": [] /* c */}',
        "top-level NaN": b"NaN",
        "binary garbage": bytes(range(256)),
    }
    cases = [
        post("json", name, body, statuses=(400,), names=("JSON", "invalid inference request"))
        for name, body in bodies.items()
    ]
    inner = '{"name":"input","datatype":"FP32","shape":[1],"data":%s}'
    for depth in (9, 100, 1000, 10_000, 100_000, 1_000_000):
        nested = "[" * depth + "0" + "]" * depth
        cases.append(
            post(
                "json",
                f"data nested {depth} deep",
                ('{"inputs":[%s]}' % (inner % nested)).encode(),
                statuses=(400,),
                names=("nested", "deeper", "shape"),
            )
        )
        cases.append(
            post(
                "json",
                f"parameters nested {depth} deep",
                ('{"inputs":[], "parameters": %s}' % ('{"a":' * depth + "1" + "}" * depth)).encode(),
                statuses=(400,),
                names=("nested", "JSON", "inference request", "input"),
            )
        )
        cases.append(
            post(
                "json",
                f"top level nested {depth} deep",
                ("[" * depth + "]" * depth).encode(),
                statuses=(400,),
                names=("nested", "JSON", "inference request"),
            )
        )
    return cases


# Per field: a path into the request and the values of a valid type there (never sent as "wrong").
_FIELDS: tuple[tuple[tuple[Any, ...], tuple[type, ...], bool], ...] = (
    (("id",), (str, type(None)), False),
    (("parameters",), (dict, type(None)), False),
    (("inputs",), (), True),
    (("inputs", 0), (), True),
    (("inputs", 0, "name"), (str,), True),
    (("inputs", 0, "shape"), (), True),
    (("inputs", 0, "shape", 0), (), False),  # without it, [1,28,28] is a valid image shape
    (("inputs", 0, "datatype"), (), True),
    (("inputs", 0, "parameters"), (dict, type(None)), False),
    (("inputs", 0, "data"), (), True),
    (("outputs",), (list, type(None)), False),
    (("outputs", 0), (), False),
    (("outputs", 0, "name"), (), True),
    (("outputs", 0, "parameters"), (dict, type(None)), False),
    (("parameters", "binary_data_output"), (bool,), False),
    (("outputs", 0, "parameters", "binary_data"), (bool,), False),
    (("inputs", 0, "parameters", "binary_data_size"), (), True),
)


def _with(req: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool = False) -> dict[str, Any]:
    req = copy.deepcopy(req)
    node: Any = req
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return req


def fields(x: np.ndarray) -> list[Case]:
    """Every field of a v2 request missing, or holding each JSON type it must not hold."""
    base = fp32_request(x[:1])
    base["inputs"][0]["parameters"] = {}
    base["outputs"] = [{"name": "logits", "parameters": {}}]
    base["parameters"] = {}
    cases = []
    for path, valid, required in _FIELDS:
        where = ".".join(str(p) for p in path)
        names = (*tuple({str(p) for p in path if isinstance(p, str)}), "input", "output", "data")
        if required and path[-1] not in ("binary_data_size",):
            cases.append(
                post(
                    "fields",
                    f"{where} missing",
                    json.dumps(_with(base, path, None, delete=True)).encode(),
                    statuses=(400,),
                    names=names,
                )
            )
        for value in WRONG_VALUES:
            if type(value) in valid:
                continue
            if path[-1] == "data" and isinstance(value, list):
                continue  # an empty list is a data/shape mismatch: the "shapes" category
            body = json.dumps(_with(base, path, value)).encode()
            cases.append(post("fields", f"{where} = {json.dumps(value)}", body, statuses=(400,), names=names))
    return cases


_TRUE_SIZE: Any = object()


def _binary(
    datatype: str, shape: list[int], payload: bytes, size: Any = _TRUE_SIZE
) -> tuple[bytes, dict[str, str]]:
    """A binary request; ``size`` = the ``binary_data_size`` declared (the payload's own by default)."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(payload) if size is _TRUE_SIZE else size},
                }
            ]
        }
    )
    return head.encode() + payload, {
        codec.HEADER_LENGTH: str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def shapes(x: np.ndarray) -> list[Case]:
    """Huge, negative, over-deep and lying shapes, JSON and binary, with data that cannot match."""
    huge = ([10**9], [2**31, 2**31], [2**63], [10**30], [1, 1, 28, 10**12], [10**6] * 8)
    bad = ([-5], [1, -1], [-1, -1], [1] * 9, [1] * 64, [1] * 1000, [0], [0, 1, 28, 28], [])
    names = ("shape", "elements", "dimension", "bytes", "rows", "no image", "FP32")
    cases = []
    for shape in (*huge, *bad):
        for datatype in ("FP32", "BYTES", "INT8"):
            data: list[Any] = ["aW1n"] if datatype == "BYTES" else [0]
            req = {"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]}
            label = f"{datatype} shape {str(shape)[:60]}"
            cases.append(post("shapes", f"JSON {label}", json.dumps(req).encode(), names=names))
            cases.append(post("shapes", f"binary {label}", *_binary(datatype, shape, b"\0" * 8), names=names))
    row = x[:1].ravel().tolist()
    mismatches = {
        "783 values for [1,1,28,28]": ([1, 1, 28, 28], row[:-1]),
        "785 values for [1,1,28,28]": ([1, 1, 28, 28], [*row, 0.0]),
        "no values": ([1, 1, 28, 28], []),
        "ragged rows": ([2, 784], [row, row[:400]]),
        "2 rows of data for [3,784]": ([3, 784], [row, row]),
        "[1,784] values for [1,783]": ([1, 783], row),
        "scalar data": ([1, 1, 28, 28], 0.5),
    }
    for label, (shape, values) in mismatches.items():
        req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": values}]}
        cases.append(
            post("shapes", f"mismatch: {label}", json.dumps(req).encode(), statuses=(400,), names=names)
        )
    raw = x[:1].astype("<f4").tobytes()
    for label, (shape, payload) in {
        "binary 3136 bytes for [2,1,28,28]": ([2, 1, 28, 28], raw),
        "binary 3135 bytes": ([1, 1, 28, 28], raw[:-1]),
        "binary 3137 bytes": ([1, 1, 28, 28], raw + b"\0"),
        "binary BYTES [3] holding 1": ([3], codec.pack_bytes([b"img"])),
    }.items():
        datatype = "BYTES" if "BYTES" in label else "FP32"
        cases.append(
            post(
                "shapes",
                f"mismatch: {label}",
                *_binary(datatype, shape, payload),
                statuses=(400,),
                names=names,
            )
        )
    return cases


def datatypes(x: np.ndarray) -> list[Case]:
    """Datatypes the model does not take, unknown ones, and data not of the datatype declared."""
    row = x[:1]
    cases = []
    for dt in ("FP16", "FP64", "INT8", "UINT8", "INT64", "BOOL", "fp32", "FP99", "", "float32", "BYTES "):
        values: list[Any] = (
            [int(v) for v in (row.ravel() > 0)] if dt in ("INT8", "UINT8", "INT64") else row.ravel().tolist()
        )
        if dt == "BOOL":
            values = [bool(v) for v in values]
        req = {"inputs": [{"name": "input", "datatype": dt, "shape": [1, 1, 28, 28], "data": values}]}
        cases.append(
            post(
                "datatypes",
                f"JSON {dt!r}",
                json.dumps(req).encode(),
                statuses=(400,),
                names=("datatype", dt or "''", "FP32"),
            )
        )
        np_dt = {"FP16": "<f2", "FP64": "<f8", "INT8": "i1", "UINT8": "u1", "INT64": "<i8", "BOOL": "?"}.get(
            dt
        )
        if np_dt:
            payload = row.astype(np_dt).tobytes()
            cases.append(
                post(
                    "datatypes",
                    f"binary {dt}",
                    *_binary(dt, [1, 1, 28, 28], payload),
                    statuses=(400,),
                    names=("datatype", dt, "FP32"),
                )
            )
    for label, values in (
        ("INT32 given floats", [0.5] * 784),
        ("BYTES given numbers", [1] * 784),
        ("BOOL given 0/1", [0] * 784),
        ("INT8 given 300", [300] * 784),
    ):
        dt = label.split()[0]
        req = {"inputs": [{"name": "input", "datatype": dt, "shape": [1, 1, 28, 28], "data": values}]}
        cases.append(
            post("datatypes", label, json.dumps(req).encode(), statuses=(400,), names=(dt, "datatype"))
        )
    return cases


def nonfinite(x: np.ndarray, backends: tuple[str, ...]) -> list[Case]:
    """NaN, ±Infinity, strings, booleans and null in FP32 data (400 before routing), and finite
    values so large the model overflows (422, never invalid JSON), on every backend."""
    row = x[:1].ravel().tolist()
    head = '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],"data":['
    tail = ",".join(json.dumps(v) for v in row[1:]) + "]}]}"
    cases = []
    for token in (
        "NaN",
        "Infinity",
        "-Infinity",
        '"NaN"',
        '"1.5"',
        "true",
        "false",
        "null",
        "{}",
        "[]",
        "1e39",
        "-1e39",
        "1e308",
        "1e400",
        '"0x1p3"',
        '""',
    ):
        for backend in backends:
            cases.append(
                post(
                    "nan-inf",
                    f"FP32 data {token} [{backend}]",
                    (head + token + "," + tail).encode(),
                    {"X-Backend": backend},
                    statuses=(400,),
                    names=("JSON", "finite", "FP32 data must be", "element"),
                )
            )
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = x[:1].copy()
        bad.flat[100] = value
        for backend in backends:
            cases.append(
                post(
                    "nan-inf",
                    f"binary FP32 {value} [{backend}]",
                    *_binary("FP32", [1, 1, 28, 28], bad.astype("<f4").tobytes()),
                    statuses=(400,),
                    names=("finite",),
                )
            )
            cases[-1].headers["X-Backend"] = backend
    for backend in backends:
        huge = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": [3e38] * 784}],
            "outputs": [{"name": "logits"}],
        }
        cases.append(
            post(
                "nan-inf",
                f"3e38 everywhere [{backend}]",
                json.dumps(huge).encode(),
                {"X-Backend": backend},
                statuses=(422,),
                names=("not finite",),
                ok=True,
            )
        )
    return cases


def header_lengths(x: np.ndarray) -> list[Case]:
    """Inference-Header-Content-Length and binary_data_size that lie, and lying BYTES prefixes."""
    payload = x[:1].astype("<f4").tobytes()
    body, headers = _binary("FP32", [1, 1, 28, 28], payload)
    n = int(headers[codec.HEADER_LENGTH])
    names = ("Inference-Header-Content-Length", "JSON", "binary", "bytes", "truncated")
    cases = []
    for value in (
        "-1",
        "abc",
        "1e3",
        "0x10",
        "",
        " ",
        "99999999999999999999",
        str(len(body)),
        str(n - 1),
        str(n + 1),
        "0",
        "1",
        str(len(body) + 1),
        "3.5",
        "+-1",
    ):
        cases.append(
            post(
                "header-length",
                f"header length {value!r}",
                body,
                {**headers, codec.HEADER_LENGTH: value},
                statuses=(400,),
                names=names,
            )
        )
    for size in (len(payload) + 1, len(payload) - 1, 0, -1, 2**63, "3136", 3136.0, True, None):
        b, h = _binary("FP32", [1, 1, 28, 28], payload, size=size)
        cases.append(
            post(
                "header-length",
                f"binary_data_size {size!r}",
                b,
                h,
                statuses=(400,),
                names=(*names, "binary_data_size"),
            )
        )
    for label, items in (
        ("prefix 2**32-1", struct.pack("<I", 2**32 - 1) + b"png"),
        ("prefix past the end", struct.pack("<I", 10) + b"png"),
        ("prefix cut", b"\x03\x00"),
        ("trailing bytes", codec.pack_bytes([b"png"]) + b"zz"),
    ):
        cases.append(
            post(
                "header-length",
                f"BYTES {label}",
                *_binary("BYTES", [1], items),
                statuses=(400,),
                names=(*names, "BYTES"),
            )
        )
    cases.append(
        post(
            "header-length",
            "binary input without the header",
            _binary("FP32", [1, 1, 28, 28], payload)[0],
            statuses=(400,),
            names=names,
        )
    )
    return cases
