"""Benchmark output: the terminal table, the JSON document, the PNG plot, the targets' table and verdicts
(the targets themselves are computed in :mod:`triserve_cli.bench.targets`)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triserve_cli.bench.paths import INT8_PAIRS, ROUTED_PATHS

Result = dict[str, Any]
"""One measurement: ``path``, ``concurrency`` and :meth:`WrkResult.to_dict`'s fields."""

PACKAGES = (
    "torchserve",
    "torch",
    "onnxruntime",
    "paddlepaddle",
    "fastapi",
    "uvicorn",
    "aiohttp",
    "httpx",
    "numpy",
    "locust",
)


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python of this machine."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def versions(wrk_version: str) -> dict[str, str]:
    """Versions of the load generator, Java and the serving packages."""
    found = {"wrk": wrk_version}
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
        found["java"] = (java.stderr.splitlines() or ["?"])[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        found["java"] = "not found"
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_state(repo: Path) -> dict[str, Any]:
    """Commit of the checkout measured and whether it had uncommitted changes under ``services/``."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    dirty = bool(git("status", "--porcelain", "services"))
    return {"commit": git("rev-parse", "HEAD"), "dirty_services": dirty}


def lookup(results: Sequence[Result], path: str, concurrency: int) -> Result | None:
    """The measurement of ``path`` at ``concurrency``, if taken."""
    return next((r for r in results if r["path"] == path and r["concurrency"] == concurrency), None)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}{unit}" if unit == "x" else f"{value:.3g} {unit}".strip()


def verdicts(rows: Sequence[dict[str, Any]]) -> str:
    """One ``PASS`` / ``MISS`` / ``n/a`` line per target with a goal (figures without one are left out)."""
    lines = []
    for t in rows:
        if t["threshold"] is None:
            continue
        word = {True: "PASS", False: "MISS", None: "n/a "}[t["met"]]
        goal = f"{t['op']} {_fmt(t['threshold'], t['unit'])}"
        lines.append(f"{word}  {t['name']}: {_fmt(t['value'], t['unit'])} (goal {goal}; {t['detail']})")
    return "\n".join(lines)


def split_table(results: Sequence[Result]) -> str:
    """Share of answers per backend (``X-Backend``) for the paths routed by the gateway's strategy."""
    rows = [r for r in results if r.get("backends") and r["path"] in ROUTED_PATHS]
    if not rows:
        return "traffic split: no routed gateway path measured"
    names = sorted({b for r in rows for b in r["backends"]})
    lines = [
        "| path (default routing) | clients | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        total = sum(r["backends"].values()) or 1
        shares = " | ".join(f"{100 * r['backends'].get(n, 0) / total:.1f} %" for n in names)
        lines.append(f"| {r['path']} | {r['concurrency']} | {shares} |")
    return "\n".join(lines)


def table(results: Sequence[Result]) -> str:
    """A Markdown table, one row per (path, concurrency); CPU columns in cores (services under test, wrk,
    every other process on the machine)."""
    lines = [
        "| path | clients | req/s | p50 ms | p95 ms | p99 ms | errors | services CPU | wrk CPU | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | {r['services_cpu']:.2f} | {r['generator_cpu']:.2f} | "
            f"{r['foreign_cpu']:.2f} |"
        )
    return "\n".join(lines)


def _int8_ratio(fp32: float, int8: float, fmt: str) -> str:
    return f"{fp32:{fmt}} / {int8:{fmt}} = {int8 / fp32:.2f}x" if fp32 > 0 else "n/a"


def int8_table(results: Sequence[Result], few: int = 1, many: int = 32) -> str:
    """INT8 (mnist v2) vs FP32 (v1) per backend, as ratios of the same run: p50 at ``few`` clients,
    req/s at ``many`` ("" when no INT8 path was measured)."""
    lines = []
    for int8, fp32 in INT8_PAIRS:
        i1, f1 = lookup(results, int8, few), lookup(results, fp32, few)
        im, fm = lookup(results, int8, many), lookup(results, fp32, many)
        if not (i1 and f1) and not (im and fm):
            continue
        p50 = _int8_ratio(f1["p50_ms"], i1["p50_ms"], ".2f") if i1 and f1 else "n/a"
        rps = _int8_ratio(fm["rps"], im["rps"], ".0f") if im and fm else "n/a"
        lines.append(f"| {fp32.removeprefix('gateway-')} | {p50} | {rps} |")
    if not lines:
        return ""
    head = [
        f"| backend (via the gateway) | p50 ms at c={few}: FP32 / INT8 = INT8 ratio "
        f"| req/s at c={many}: FP32 / INT8 = INT8 ratio |",
        "|---|---:|---:|",
    ]
    return "\n".join(head + lines)


def targets_table(rows: Sequence[dict[str, Any]]) -> str:
    """The targets as a Markdown table (figures without a goal: "reported")."""
    lines = ["| target | measured | goal | met |", "|---|---:|---:|:---:|"]
    for t in rows:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        goal = "reported" if t["threshold"] is None else f"{t['op']} {_fmt(t['threshold'], t['unit'])}"
        if t["threshold"] is None:
            met = ""
        lines.append(f"| {t['name']} | {_fmt(t['value'], t['unit'])} | {goal} | {met} |")
    return "\n".join(lines)


def generator_table(generator: dict[str, Any]) -> str:
    """The load generator check as one paragraph."""
    best = generator.get("best_path")
    if not best:
        return "load generator: no path measured"
    return (
        f"load generator check: wrk against a trivial endpoint reached {generator['trivial_rps']:.0f} "
        f"req/s at {best['concurrency']} clients; the best path ({best['path']}) reached "
        f"{best['rps']:.0f} req/s there: "
        f"{generator['ratio']:.1f}x headroom ({'ok' if generator['ok'] else 'NOT ENOUGH'}, need >= 10x)."
    )


def plot(results: Sequence[Result], path: Path, title: str) -> Path:
    """PNG with throughput and p99 latency against concurrency, one line per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(14, 6))
    names = list(dict.fromkeys(r["path"] for r in results))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        rows = sorted((r for r in results if r["path"] == name), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        style = {
            "color": cmap(i % 20),
            "marker": "o",
            "label": name,
            "linestyle": "--" if name.startswith("torchserve-") else "-",
            "linewidth": 2.5 if name in ("torchserve-stock", "torchserve-tuned", "gateway-png") else 1.5,
        }
        ax_rps.plot(xs, [r["rps"] for r in rows], **style)
        ax_p99.plot(xs, [r["p99_ms"] for r in rows], **style)
    for ax, label in ((ax_rps, "throughput (req/s)"), (ax_p99, "p99 latency (ms, log)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        xticks = sorted({r["concurrency"] for r in results})
        ax.set_xticks(xticks, [str(x) for x in xticks])
    ax_p99.set_yscale("log")
    ax_rps.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(document: dict[str, Any], path: Path) -> Path:
    """The whole run as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def markdown(document: dict[str, Any]) -> str:
    """Results, generator check and targets of a run, as pasted into BENCHMARKS.md."""
    parts = [
        table(document["results"]),
        int8_table(document["results"]),
        generator_table(document["generator"]),
        split_table(document["results"]),
        targets_table(document["targets"]),
        verdicts(document["targets"]),
    ]
    return "\n\n".join(p for p in parts if p)
