"""The request paths the benchmark measures side by side, and how each one is sent and checked.

Every path is one (service instance, endpoint, payload) triple. Services (see :mod:`.stack`):

- ``torchserve-stock``: TorchServe in its stock configuration (1 worker, batch size 1): the baseline;
- ``torchserve-tuned``: TorchServe tuned as its docs advise (workers, batch size and delay from a sweep,
  quiet logging, no access log; :class:`~triserve_cli.bench.stack.TorchServeTuning`): the peer a careful
  user would run instead;
- ``torchserve``, ``onnx``, ``paddle``: the backends as the platform configures them;
- ``gateway``: the gateway with its default routing file;
- ``gateway-batching`` / ``gateway-nobatching``: the gateway with dynamic batching forced on / off.

Every path asks for ``mnist`` version 1 (FP32) by name — the store also holds version 2 (INT8), which a
runtime service would answer a request without a version with — except the ``-int8`` paths: version 2
through the gateway, forced to each backend that serves it (:data:`INT8_PAIRS` compares them with
version 1 on the same backend).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from triserve_cli.bench.payloads import Digit
from triserve_cli.bench.wrk import Answer

Payload = Literal["png", "npy", "v2"]
FP32_VERSION, INT8_VERSION = "1", "2"
V2_INFER = f"/v2/models/mnist/versions/{FP32_VERSION}/infer"
V2_INFER_INT8 = f"/v2/models/mnist/versions/{INT8_VERSION}/infer"
TS_PREDICT = f"/predictions/mnist/{FP32_VERSION}"


@dataclass(frozen=True)
class BenchPath:
    """One measured path."""

    name: str
    title: str
    service: str
    method: str
    endpoint: str
    payload: Payload
    answer: Answer
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self, digit: Digit) -> tuple[bytes, dict[str, str]]:
        """Body and headers of one request carrying ``digit``."""
        if self.payload == "png":
            return digit.png, {"content-type": "image/png", **self.headers}
        if self.payload == "npy":
            return digit.npy, {"content-type": "application/octet-stream", **self.headers}
        return digit.v2, {**digit.v2_headers, **self.headers}


def _gateway(
    name: str, title: str, backend: str | None, service: str = "gateway", endpoint: str = V2_INFER
) -> BenchPath:
    headers = {"X-Backend": backend} if backend else {}
    return BenchPath(name, title, service, "POST", endpoint, "v2", "v2", headers)


PATHS: tuple[BenchPath, ...] = (
    BenchPath(
        "torchserve-stock",
        "TorchServe direct, stock config (1 worker, batch 1), PNG upload [baseline]",
        "torchserve-stock",
        "PUT",
        TS_PREDICT,
        "png",
        "text",
    ),
    BenchPath(
        "torchserve-tuned",
        "TorchServe direct, tuned as its docs advise (workers, batching, quiet logs), PNG upload",
        "torchserve-tuned",
        "PUT",
        TS_PREDICT,
        "png",
        "text",
    ),
    BenchPath(
        "torchserve",
        "TorchServe direct, platform config, .npy tensor",
        "torchserve",
        "PUT",
        TS_PREDICT,
        "npy",
        "npy",
    ),
    BenchPath("onnx", "ONNX service direct, OIP v2 binary", "onnx", "POST", V2_INFER, "v2", "v2"),
    BenchPath("paddle", "Paddle service direct, OIP v2 binary", "paddle", "POST", V2_INFER, "v2", "v2"),
    _gateway("gateway-torchserve", "gateway -> TorchServe (X-Backend), OIP v2 binary", "torchserve"),
    _gateway(
        "gateway-torchserve-int8",
        "gateway -> TorchServe (X-Backend), mnist v2 INT8, OIP v2 binary",
        "torchserve",
        endpoint=V2_INFER_INT8,
    ),
    _gateway("gateway-onnx", "gateway -> ONNX (X-Backend), OIP v2 binary", "onnx"),
    _gateway(
        "gateway-onnx-int8",
        "gateway -> ONNX (X-Backend), mnist v2 INT8, OIP v2 binary",
        "onnx",
        endpoint=V2_INFER_INT8,
    ),
    _gateway("gateway-paddle", "gateway -> Paddle (X-Backend), OIP v2 binary", "paddle"),
    _gateway("gateway-auto", "gateway, automatic routing, OIP v2 binary", None),
    BenchPath(
        "gateway-png",
        "gateway, automatic routing, TorchServe-style PNG upload",
        "gateway",
        "PUT",
        TS_PREDICT,
        "png",
        "text",
    ),
    _gateway("gateway-batching-on", "gateway -> ONNX, dynamic batching on", "onnx", "gateway-batching"),
    _gateway("gateway-batching-off", "gateway -> ONNX, dynamic batching off", "onnx", "gateway-nobatching"),
)
"""Every path, baseline first; each INT8 path right after its FP32 twin (measured back to back)."""

BY_NAME: dict[str, BenchPath] = {p.name: p for p in PATHS}

ADDED_LATENCY_PAIRS: tuple[tuple[str, str], ...] = (
    ("gateway-onnx", "onnx"),
    ("gateway-paddle", "paddle"),
    ("gateway-torchserve", "torchserve"),
)
"""(gateway path, the same backend direct): their p50 difference at one client is the gateway's cost."""

ROUTED_PATHS: frozenset[str] = frozenset({"gateway-auto", "gateway-png"})
"""The paths routed by the gateway's default strategy (their traffic split is reported)."""

INT8_PAIRS: tuple[tuple[str, str], ...] = (
    ("gateway-onnx-int8", "gateway-onnx"),
    ("gateway-torchserve-int8", "gateway-torchserve"),
)
"""(INT8 path, the FP32 path on the same backend): Paddle has no INT8 route, so no pair."""


def select(names: list[str] | None) -> list[BenchPath]:
    """The paths named (all when None), in the canonical order; unknown names raise ``KeyError``."""
    if not names:
        return list(PATHS)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise KeyError(f"unknown path(s) {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    return [p for p in PATHS if p.name in names]
