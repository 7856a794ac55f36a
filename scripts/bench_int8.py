"""INT8 (``mnist`` version 2) vs FP32 (version 1) per backend, through the gateway, interleaved.

``triserve bench --paths gateway-onnx,gateway-onnx-int8,...`` measures each path once, one after the other;
on a shared, noisy machine the load of other jobs drifts between two such runs by more than the
difference sought. This script measures the same pairs in short alternating windows instead (ABBA order
per round: FP32, INT8, INT8, FP32, ...), so both versions see the same background load, and reports the
median over rounds of each version's figures and of the per-round INT8/FP32 ratios:

- p50 latency at 1 client (wrk, one keep-alive connection), and
- requests/s at 32 clients,

with the gateway forced to each backend that serves both versions (``X-Backend``: ONNX and TorchServe;
Paddle has no INT8 route). Services are started on free ports exactly as ``triserve bench`` starts them
(:mod:`triserve_cli.bench.stack`); every answer is checked (wrk's Lua hook: status and digit).

First, the engines alone (no HTTP, one thread, in this process): the median time of one call of each
version's TorchScript (``model.pt``, what TorchServe's handler runs) and ONNX model (ONNX Runtime's
CPU provider) on batches of 1 and 32.

    .venv/bin/python scripts/bench_int8.py --rounds 6 --seconds 4 --out /tmp/int8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from triserve_cli.bench import cpu, wrk
from triserve_cli.bench.check import precheck
from triserve_cli.bench.paths import BY_NAME, BenchPath
from triserve_cli.bench.payloads import LOAD_INDEX, SWEEP_INDICES, load_digits
from triserve_cli.bench.stack import Stack
from triserve_common.manifest import read_manifest
from triserve_common.paths import REPO_ROOT

LEVELS = (1, 32)
BATCHES = (1, 32)


def engine_times(store: Path, calls: int = 200) -> list[dict[str, Any]]:
    """Median ms per call of each version's TorchScript and ONNX model, one thread, batches 1 and 32."""
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    rows = []
    for version in ("1", "2"):
        folder = store / "mnist" / version
        scripted = torch.jit.load(str(folder / "model.pt")).eval()  # type: ignore[no-untyped-call]
        session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        for batch in BATCHES:
            shape = [batch, *read_manifest(folder).inputs[0].shape[1:]]
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            calls_of = {
                "torchscript": partial(scripted, torch.from_numpy(x)),
                "onnx": partial(session.run, None, {"input": x}),
            }
            for engine, call in calls_of.items():
                with torch.inference_mode():
                    for _ in range(20):
                        call()
                    times = []
                    for _ in range(calls if batch == 1 else calls // 4):
                        start = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - start)
                rows.append({"version": version, "engine": engine, "batch": batch,
                             "median_ms": statistics.median(times) * 1e3})
    return rows


def engine_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| engine | batch | FP32 (v1) ms | INT8 (v2) ms | INT8 / FP32 |", "|---|---:|---:|---:|---:|"]
    for engine in ("torchscript", "onnx"):
        for batch in BATCHES:
            fp32, int8 = (next(r["median_ms"] for r in rows if (r["engine"], r["batch"], r["version"]) ==
                               (engine, batch, v)) for v in ("1", "2"))
            lines.append(f"| {engine} | {batch} | {fp32:.3f} | {int8:.3f} | **{int8 / fp32:.2f}x** |")
    return "\n".join(lines)


def pairs(backends: list[str]) -> dict[str, tuple[BenchPath, BenchPath]]:
    """backend -> (FP32 path, INT8 path)."""
    return {b: (BY_NAME[f"gateway-{b}"], BY_NAME[f"gateway-{b}-int8"]) for b in backends}


def measure(script: Path, url: str, level: int, seconds: float, pgids: list[int]) -> dict[str, Any]:
    """One wrk window, with the cores used meanwhile by the services and by everything else."""
    before = cpu.Sample.take(pgids)
    result = wrk.run(script, url, level, seconds)
    after = cpu.Sample.take(pgids)
    row = {**result.to_dict(), **cpu.split(before, after, 0.0, result.duration_s or seconds)}
    time.sleep(0.5)  # let abandoned requests drain before the next window
    return row


def summary(rows: list[dict[str, Any]], backend: str, level: int) -> dict[str, Any]:
    """Medians of one backend at one level: each version's figure and the per-round INT8/FP32 ratio."""
    key = "p50_ms" if level == 1 else "rps"
    fp32 = [r for r in rows if r["backend"] == backend and r["level"] == level and r["version"] == "fp32"]
    int8 = [r for r in rows if r["backend"] == backend and r["level"] == level and r["version"] == "int8"]
    by_round = {r["round"]: r[key] for r in fp32}
    ratios = [r[key] / by_round[r["round"]] for r in int8 if by_round.get(r["round"])]
    return {
        "backend": backend, "clients": level, "figure": key,
        "fp32": statistics.median(r[key] for r in fp32), "int8": statistics.median(r[key] for r in int8),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "foreign_cpu": statistics.median(r["foreign_cpu"] for r in fp32 + int8),
        "errors": sum(int(r["errors"]) for r in fp32 + int8),
    }


def table(summaries: list[dict[str, Any]]) -> str:
    lines = ["| backend | clients | figure | FP32 (v1) | INT8 (v2) | INT8 / FP32 (median, range over rounds) "
             "| other CPU | errors |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for s in summaries:
        unit = "ms" if s["figure"] == "p50_ms" else "req/s"
        fmt = ".2f" if unit == "ms" else ".0f"
        lines.append(
            f"| {s['backend']} | {s['clients']} | {'p50 latency' if unit == 'ms' else 'throughput'} "
            f"| {s['fp32']:{fmt}} {unit} | {s['int8']:{fmt}} {unit} "
            f"| **{s['ratio']:.2f}x** ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) "
            f"| {s['foreign_cpu']:.2f} | {s['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds per backend and level (default 6)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per wrk window (default 4)")
    parser.add_argument("--backends", default="onnx,torchserve", help="backends serving both versions")
    parser.add_argument("--model-store", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--out", type=Path, default=Path("bench-results/int8"))
    args = parser.parse_args(argv)
    work = args.out / "run"
    digits = load_digits(SWEEP_INDICES, None, args.model_store)
    load = next(d for d in digits if d.index == LOAD_INDEX)
    chosen = pairs(args.backends.split(","))
    engines = engine_times(args.model_store)
    print(engine_table(engines), file=sys.stderr)
    rows: list[dict[str, Any]] = []
    stack = Stack(["gateway"], work, args.model_store)
    stack.start(on_ready=lambda name, s: print(f"{name} ready after {s:.1f}s", file=sys.stderr))
    try:
        pgids = [i.proc.pid for i in stack.instances.values() if i.proc is not None]
        scripts: dict[str, tuple[Path, str]] = {}
        for path in (p for pair in chosen.values() for p in pair):
            check = precheck(path, stack.url(path.service), digits)
            if not check.ok:
                raise SystemExit(f"pre-check failed on {path.name}: {'; '.join(check.failures)}")
            body, headers = path.body(load)
            request = wrk.Request(path.method, stack.url(path.service) + path.endpoint, body, headers,
                                  path.answer, load.label)
            scripts[path.name] = (wrk.write_script(request, work / "wrk", path.name), request.url)
            measure(*scripts[path.name], 32, 3, pgids)  # warm-up
        for backend, (fp32, int8) in chosen.items():
            for level in LEVELS:
                for rnd in range(args.rounds):
                    order = [("fp32", fp32), ("int8", int8)]
                    for version, path in order if rnd % 2 == 0 else order[::-1]:
                        row = measure(*scripts[path.name], level, args.seconds, pgids)
                        rows.append({"backend": backend, "level": level, "round": rnd, "version": version,
                                     "path": path.name, **row})
                        print(f"{path.name} c={level} round {rnd}: {row['rps']:.0f} req/s, p50 "
                              f"{row['p50_ms']:.2f} ms, other CPU {row['foreign_cpu']:.2f}", file=sys.stderr)
    finally:
        stack.stop()
    summaries = [summary(rows, b, level) for b in chosen for level in LEVELS]
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {**vars(args), "out": str(args.out), "model_store": str(args.model_store)}
    document = {"engines": engines, "rows": rows, "summaries": summaries, "settings": settings}
    (args.out / "int8.json").write_text(json.dumps(document, indent=2) + "\n")
    markdown = engine_table(engines) + "\n\n" + table(summaries)
    (args.out / "int8.md").write_text(markdown + "\n")
    print(markdown)
    return 1 if any(s["errors"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
