"""The targets of issue 12 computed from a run's results, and figures reported without a goal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from triserve_cli.bench.paths import ADDED_LATENCY_PAIRS
from triserve_cli.bench.report import Result, lookup

Target = dict[str, Any]
"""``name``, ``value``, ``op``, ``threshold`` (None: reported, no goal), ``unit``, ``met``, ``detail``."""


def _target(
    name: str, value: float | None, op: str, threshold: float | None, unit: str, detail: str
) -> Target:
    """One target (``threshold`` None: reported for information, no goal)."""
    if value is None or threshold is None:
        met = None
    else:
        met = value >= threshold if op == ">=" else value <= threshold
    return {
        "name": name,
        "value": value,
        "op": op,
        "threshold": threshold,
        "unit": unit,
        "met": met,
        "detail": detail,
    }


def _ratio(results: Sequence[Result], num: str, den: str, concurrency: int) -> float | None:
    a, b = lookup(results, num, concurrency), lookup(results, den, concurrency)
    return a["rps"] / b["rps"] if a and b and b["rps"] > 0 else None


def _field(results: Sequence[Result], path: str, concurrency: int, key: str) -> float | None:
    row = lookup(results, path, concurrency)
    return float(row[key]) if row else None


def _added_p50(results: Sequence[Result], gateway: str, direct: str) -> float | None:
    """``gateway``'s p50 minus ``direct``'s at one client: what the gateway adds."""
    g, d = _field(results, gateway, 1, "p50_ms"), _field(results, direct, 1, "p50_ms")
    return g - d if g is not None and d is not None else None


def goals(results: Sequence[Result]) -> list[Target]:
    """The targets with a goal (value None where a needed run is missing)."""
    errors = sum(int(r["errors"]) for r in results)
    return [
        _target("gateway-png vs torchserve-stock, req/s at c=32",
                _ratio(results, "gateway-png", "torchserve-stock", 32), ">=", 5.0, "x",
                "gateway-png rps / torchserve-stock rps"),
        _target("gateway-png p99 at c=32", _field(results, "gateway-png", 32, "p99_ms"), "<=", 50.0, "ms",
                "gateway-png p99 (PNG, default routing)"),
        _target("gateway-auto vs gateway-onnx, req/s at c=32",
                _ratio(results, "gateway-auto", "gateway-onnx", 32), ">=", 0.9, "x",
                "default routing vs ONNX forced, same v2 body"),
        _target("gateway added latency, p50 at c=1 (onnx)", _added_p50(results, "gateway-onnx", "onnx"),
                "<=", 1.0, "ms", "gateway-onnx p50 - onnx p50"),
        _target("dynamic batching on vs off, req/s at c=64",
                _ratio(results, "gateway-batching-on", "gateway-batching-off", 64), ">=", 2.0, "x",
                "gateway-batching-on rps / gateway-batching-off rps"),
        _target("gateway-png vs torchserve-tuned, req/s at c=32",
                _ratio(results, "gateway-png", "torchserve-tuned", 32), ">=", 2.5, "x",
                "gateway-png rps / torchserve-tuned rps"),
        _target("errors in every run", float(errors) if results else None, "<=", 0.0, "",
                "socket errors + timeouts + non-2xx + wrong digits, all runs"),
    ]


def reported(results: Sequence[Result]) -> list[Target]:
    """Figures reported without a goal (``threshold`` None)."""
    out = [
        _target("gateway-png vs torchserve-stock, req/s at c=64",
                _ratio(results, "gateway-png", "torchserve-stock", 64), ">=", None, "x",
                "gateway-png rps / torchserve-stock rps"),
        _target("gateway-png p99 at c=64", _field(results, "gateway-png", 64, "p99_ms"), "<=", None, "ms",
                "gateway-png p99"),
        _target("gateway-auto p99 at c=32", _field(results, "gateway-auto", 32, "p99_ms"), "<=", None, "ms",
                "compare with gateway-onnx p99"),
        _target("gateway-onnx p99 at c=32", _field(results, "gateway-onnx", 32, "p99_ms"), "<=", None, "ms",
                "ONNX forced"),
    ]
    for gateway, direct in ADDED_LATENCY_PAIRS:
        if direct != "onnx":
            added = _added_p50(results, gateway, direct)
            out.append(_target(f"gateway added latency, p50 at c=1 ({direct})", added, "<=", None, "ms",
                               f"{gateway} p50 - {direct} p50"))
    return out


def targets(results: Sequence[Result]) -> list[Target]:
    """The targets of issue 12, computed from this run (value None where a needed run is missing),
    then figures reported without a goal (``threshold`` None)."""
    return goals(results) + reported(results)
