"""The request paths the benchmark measures side by side, and how each one is sent and checked.

Every path is one (service instance, endpoint, payload) triple. Services (see :mod:`.stack`):

- ``torchserve-stock``: TorchServe in its stock configuration (1 worker, batch size 1): the baseline;
- ``torchserve-tuned``: TorchServe tuned as its docs advise (workers, batch size and delay from a sweep,
  quiet logging, no access log; :class:`~triserve_cli.bench.stack.TorchServeTuning`): the peer a careful
  user would run instead;
- ``torchserve``, ``onnx``, ``paddle``: the backends as the platform configures them;
- ``gateway``: the gateway with its default routing file;
- ``gateway-batching`` / ``gateway-nobatching``: the gateway with dynamic batching forced on / off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from triserve_cli.bench.payloads import Digit
from triserve_cli.bench.wrk import Answer

Payload = Literal["png", "npy", "v2"]
V2_INFER = "/v2/models/mnist/infer"
TS_PREDICT = "/predictions/mnist"


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


def _gateway(name: str, title: str, backend: str | None, service: str = "gateway") -> BenchPath:
    headers = {"X-Backend": backend} if backend else {}
    return BenchPath(name, title, service, "POST", V2_INFER, "v2", "v2", headers)


PATHS: tuple[BenchPath, ...] = (
    BenchPath(
        "torchserve-stock",
        "TorchServe direct, stock config (1 worker, batch 1), PNG upload [baseline]",
        "torchserve-stock", "PUT", TS_PREDICT, "png", "text",
    ),
    BenchPath(
        "torchserve-tuned",
        "TorchServe direct, tuned as its docs advise (workers, batching, quiet logs), PNG upload",
        "torchserve-tuned", "PUT", TS_PREDICT, "png", "text",
    ),
    BenchPath(
        "torchserve", "TorchServe direct, platform config, .npy tensor", "torchserve", "PUT", TS_PREDICT,
        "npy", "npy",
    ),
    BenchPath("onnx", "ONNX service direct, OIP v2 binary", "onnx", "POST", V2_INFER, "v2", "v2"),
    BenchPath("paddle", "Paddle service direct, OIP v2 binary", "paddle", "POST", V2_INFER, "v2", "v2"),
    _gateway("gateway-torchserve", "gateway -> TorchServe (X-Backend), OIP v2 binary", "torchserve"),
    _gateway("gateway-onnx", "gateway -> ONNX (X-Backend), OIP v2 binary", "onnx"),
    _gateway("gateway-paddle", "gateway -> Paddle (X-Backend), OIP v2 binary", "paddle"),
    _gateway("gateway-auto", "gateway, automatic routing, OIP v2 binary", None),
    BenchPath("gateway-png", "gateway, automatic routing, TorchServe-style PNG upload", "gateway", "PUT",
              TS_PREDICT, "png", "text"),
    _gateway("gateway-batching-on", "gateway -> ONNX, dynamic batching on", "onnx", "gateway-batching"),
    _gateway(
        "gateway-batching-off", "gateway -> ONNX, dynamic batching off", "onnx", "gateway-nobatching"
    ),
)
"""Every path, baseline first."""

BY_NAME: dict[str, BenchPath] = {p.name: p for p in PATHS}

ADDED_LATENCY_PAIRS: tuple[tuple[str, str], ...] = (
    ("gateway-onnx", "onnx"),
    ("gateway-paddle", "paddle"),
    ("gateway-torchserve", "torchserve"),
)
"""(gateway path, the same backend direct): their p50 difference at one client is the gateway's cost."""

ROUTED_PATHS: frozenset[str] = frozenset({"gateway-auto", "gateway-png"})
"""The paths routed by the gateway's default strategy (their traffic split is reported)."""


def select(names: list[str] | None) -> list[BenchPath]:
    """The paths named (all when None), in the canonical order; unknown names raise ``KeyError``."""
    if not names:
        return list(PATHS)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise KeyError(f"unknown path(s) {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    return [p for p in PATHS if p.name in names]
