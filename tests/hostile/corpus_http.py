"""Corpus categories about the URL and headers: unknown models and versions, bad ``topk``,
unknown ``X-Backend``, hostile ``X-Request-Id``; and the normal requests every backend must
still answer right between categories (KServe's sample shapes included)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np

from tests.hostile.cases import INFER, PREDICT, Answer, Case

NOT_FOUND = ("not routed", "not served", "not found", "Requested resource")
BAD_NAMES = (
    "cifar10",
    "MNIST",
    "mnist%20",
    "x" * 300,
    "%2E%2E%2Fx",
    "..%2Fx",
    "%2e%2e",
    "mnist%00",
    "%C3%BCnicode",
    "mnist.mar",
    "%3Bdrop",
    "%27",
    "%3Cscript%3E",
    "%FF%FE",
    "-1",
    "~",
    "mnist%3F",
    "%20",
)
BAD_VERSIONS = (
    "latest",
    "LATEST",
    "0",
    "99",  # (1 is FP32, 2 the INT8 version)
    "-1",
    "1.0",
    "01",
    "%201",
    "x" * 300,
    "%2E%2E",
    "..%2F1",
    "1%00",
    "v1",
    "default",
    "%FF",
    "1%2F..",
)
_VALID_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def _fp32(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
            ]
        }
    ).encode()


def names_and_versions(png: bytes, x: np.ndarray) -> list[Case]:
    """Unknown models and versions on both APIs: 404 naming what exists, before any routing."""
    body = _fp32(x[:1])
    cases = []
    for name in BAD_NAMES:
        cases.append(
            Case(
                "names",
                f"model {name[:40]!r}",
                "PUT",
                f"/predictions/{name}",
                png,
                statuses=(404,),
                names=NOT_FOUND,
            )
        )
        cases.append(
            Case(
                "names",
                f"model {name[:40]!r} with version",
                "POST",
                f"/predictions/{name}/1",
                png,
                statuses=(404,),
                names=NOT_FOUND,
            )
        )
        cases.append(
            Case(
                "names",
                f"v2 model {name[:40]!r}",
                "POST",
                f"/v2/models/{name}/infer",
                body,
                statuses=(404,),
                names=NOT_FOUND,
            )
        )
        cases.append(
            Case(
                "names",
                f"v2 metadata {name[:40]!r}",
                "GET",
                f"/v2/models/{name}",
                statuses=(404,),
                names=NOT_FOUND,
            )
        )
    for version in BAD_VERSIONS:
        cases.append(
            Case(
                "names",
                f"version {version[:40]!r}",
                "PUT",
                f"/predictions/mnist/{version}",
                png,
                statuses=(404,),
                names=("versions: 1", *NOT_FOUND),
            )
        )
        cases.append(
            Case(
                "names",
                f"v2 version {version[:40]!r}",
                "POST",
                f"/v2/models/mnist/versions/{version}/infer",
                body,
                statuses=(404,),
                names=("versions: 1", *NOT_FOUND),
            )
        )
        cases.append(
            Case(
                "names",
                f"v2 ready {version[:40]!r}",
                "GET",
                f"/v2/models/mnist/versions/{version}/ready",
                statuses=(404,),
                names=("versions: 1", *NOT_FOUND),
            )
        )
    return cases


def _topk_check(label: int, k: int) -> Callable[[Answer], str | None]:
    def check(answer: Answer) -> str | None:
        body = json.loads(answer.body)
        if not isinstance(body, dict) or len(body) != k or next(iter(body)) != str(label):
            return f"top-{k} answer {body} does not rank {label} first"
        return None

    return check


def _as_topk(raw: str) -> int | None:
    try:
        k = int(raw)
    except ValueError:
        return None
    return k if 1 <= k <= 10 else None


def topk(png: bytes, label: int, backends: tuple[str, ...]) -> list[Case]:
    """``?topk=`` and ``X-TopK``: out of range or not integers → 400; valid → valid JSON, right order."""
    values = (
        "0",
        "-1",
        "11",
        "abc",
        "1.5",
        " ",
        "1e1",
        "9" * 25,
        "0x3",
        "3;drop",
        "+3",
        " 4 ",
        "10",
        "1",
        "\u0663",
        "\x00",
    )
    cases = []
    for i, raw in enumerate(values):
        backend = backends[i % len(backends)]
        k = _as_topk(raw)
        expect: dict[str, Any] = (
            {"ok": True, "check": _topk_check(label, k)} if k else {"statuses": (400,), "names": ("topk",)}
        )
        cases.append(
            Case(
                "topk",
                f"?topk={raw!r} [{backend}]",
                "PUT",
                f"{PREDICT}?topk={quote(raw, safe='')}",
                png,
                {"X-Backend": backend},
                **expect,
            )
        )
        if raw.isascii() and raw.isprintable():
            cases.append(
                Case(
                    "topk",
                    f"X-TopK {raw!r} [{backend}]",
                    "PUT",
                    PREDICT,
                    png,
                    {"X-TopK": raw, "X-Backend": backend},
                    **expect,
                )
            )
    return cases


def backends_forced(png: bytes, label: int, known: tuple[str, ...]) -> list[Case]:
    """``X-Backend`` / ``?backend=`` naming no backend of the model → 400 naming the choices."""
    values = (
        "gpu",
        "ONNX",
        " paddle ",
        "TorchServe",
        "onnx,paddle",
        "*",
        "x" * 1000,
        "../onnx",
        "onnx\t",
        "none",
        "0",
        "null",
        "triton",
        "paddle;onnx",
        "",
        "\u00fcnnx",
    )
    cases = []
    for raw in values:
        valid = raw.strip().lower() in known or not raw.strip()
        expect: dict[str, Any] = (
            {"label": label} if valid else {"statuses": (400,), "names": ("choose from",)}
        )
        if raw.isascii():
            cases.append(
                Case(
                    "x-backend", f"X-Backend {raw[:30]!r}", "PUT", PREDICT, png, {"X-Backend": raw}, **expect
                )
            )
        cases.append(
            Case(
                "x-backend",
                f"?backend={raw[:30]!r}",
                "PUT",
                f"{PREDICT}?backend={quote(raw, safe='')}",
                png,
                **expect,
            )
        )
    return cases


def _id_check(sent: str) -> Callable[[Answer], str | None]:
    def check(answer: Answer) -> str | None:
        got = answer.headers.get("x-request-id", "")
        if _VALID_ID.match(sent):
            return None if got == sent else f"request id {sent[:40]!r} answered as {got[:40]!r}"
        return None if re.fullmatch(r"[0-9a-f]{32}", got) else f"hostile request id echoed as {got[:60]!r}"

    return check


def request_ids(png: bytes, label: int, backends: tuple[str, ...]) -> list[Case]:
    """Hostile ``X-Request-Id`` values: kept when sane (printable ASCII, <= 128), else replaced."""
    values = (
        "a" * 128,
        "a" * 129,
        "a" * 10_000,
        "with space",
        "tab\there",
        "\u00fcn\u00efc\u00f6d\u00e9",
        ",",
        "a,b,c",
        "<script>alert(1)</script>",
        '{"json": 1}',
        "%0d%0aSet-Cookie:x",
        "null",
        "-",
        "../../etc/passwd",
        "'; DROP TABLE x;--",
    )
    cases = []
    for i, rid in enumerate(values):
        backend = backends[i % len(backends)]
        headers = {"X-Request-Id": rid, "X-Backend": backend}
        cases.append(
            Case(
                "x-request-id",
                f"{rid[:30]!r} [{backend}]",
                "PUT",
                PREDICT,
                png,
                headers,
                label=label,
                check=_id_check(rid),
            )
        )
        cases.append(
            Case(
                "x-request-id",
                f"{rid[:30]!r} v2 [{backend}]",
                "POST",
                INFER,
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "image",
                                "datatype": "BYTES",
                                "shape": [-1],
                                "data": [base64.b64encode(png).decode()],
                            }
                        ],
                        "outputs": [{"name": "label"}],
                    }
                ).encode(),
                headers,
                ok=True,
                check=_id_check(rid),
            )
        )
    return cases


# ------------------------------------------------------------------ normal requests


def _v2_label(label: int) -> Callable[[Answer], str | None]:
    def check(answer: Answer) -> str | None:
        outputs = {o["name"]: o for o in json.loads(answer.body)["outputs"]}
        if "label" in outputs:
            got = outputs["label"]["data"]
        else:
            got = [str(int(np.argmax(outputs["logits"]["data"])))]
        return None if got == [str(label)] else f"answered {got}, expected {label}"

    return check


def normal(
    pngs: list[bytes], labels: list[int], x: np.ndarray, backends: tuple[str, ...], k: int
) -> list[Case]:
    """Right answers from every backend: a PNG (TorchServe API), FP32 as the model takes it, and
    what KServe's samples send — FP32 [1,28,28], [1,784], [28,28] and BYTES [-1]."""
    d = k % len(pngs)
    png, label, row = pngs[d], labels[d], x[d]
    b64 = base64.b64encode(png).decode()
    requests = {
        "FP32 [1,1,28,28]": {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": row.ravel().tolist()}
            ]
        },
        "FP32 [1,28,28]": {
            "inputs": [
                {
                    "name": "input-0",
                    "datatype": "FP32",
                    "shape": [1, 28, 28],
                    "data": row.reshape(28, 28).tolist(),
                }
            ]
        },
        "FP32 [1,784]": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": row.ravel().tolist()}]
        },
        "FP32 [28,28]": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [28, 28], "data": row.ravel().tolist()}]
        },
        "BYTES [-1]": {
            "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [-1], "data": [b64]}],
            "outputs": [{"name": "label"}],
        },
    }
    cases = []
    for backend in backends:
        cases.append(
            Case("normal", f"PNG [{backend}]", "PUT", PREDICT, png, {"X-Backend": backend}, label=label)
        )
        for name, req in requests.items():
            cases.append(
                Case(
                    "normal",
                    f"{name} [{backend}]",
                    "POST",
                    INFER,
                    json.dumps(req).encode(),
                    {"X-Backend": backend},
                    ok=True,
                    check=_v2_label(label),
                )
            )
    return cases
