"""One benchmark run: start the services, pre-check every path, calibrate wrk, measure, report."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from triserve_cli.bench import report, wrk
from triserve_cli.bench.check import precheck
from triserve_cli.bench.paths import BenchPath
from triserve_cli.bench.payloads import LOAD_INDEX, SWEEP_INDICES, Digit, load_digits
from triserve_cli.bench.stack import Instance, Stack, free_port
from triserve_cli.platform import ServiceSpec

DEFAULT_CONCURRENCY = (1, 8, 32, 64)


@dataclass
class BenchConfig:
    """What to measure and how long."""

    paths: list[BenchPath]
    out_dir: Path
    model_store: Path
    concurrency: list[int] = field(default_factory=lambda: list(DEFAULT_CONCURRENCY))
    duration_s: float = 10.0
    warmup_s: float = 3.0
    threads: int = 1
    timeout_s: float = 10.0
    mnist_dir: Path | None = None
    progress: bool = True
    command: str = ""


class BenchError(RuntimeError):
    """The run could not be measured (a service did not start, a path answered wrongly)."""


def _trivial_instance(workdir: Path, digit: Digit) -> Instance:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spec = ServiceSpec(
        name="trivial",
        argv=(sys.executable, "-m", "triserve_cli.bench.trivial", str(port), str(digit.label)),
        env={},
        ready_url=f"{url}/ping",
        port_names={"http": port},
    )
    return Instance("trivial", spec, url, workdir / "logs" / "trivial.log")


def _measure(
    request: wrk.Request, script: Path, config: BenchConfig, connections: int, seconds: float,
    tick: Callable[[float], None] | None,
) -> dict[str, Any]:
    """One wrk run, with the CPU time wrk itself used (from the reaped child's rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = wrk.run(script, request.url, connections, seconds, config.threads, config.timeout_s, tick)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**result.to_dict(), "generator_cpu": cpu_s / result.duration_s if result.duration_s else 0.0}


def _say(message: str, bar: tqdm[Any] | None = None) -> None:
    if bar is not None:
        bar.write(message)
    else:
        print(message, file=sys.stderr, flush=True)


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the whole benchmark; return the JSON document (also written, with the PNG, to ``out_dir``)."""
    started = datetime.now(UTC)
    out = config.out_dir
    scripts = out / "wrk"
    digits = load_digits(SWEEP_INDICES, config.mnist_dir, config.model_store)
    load_digit = load_digits((LOAD_INDEX,), config.mnist_dir, config.model_store)[0]
    services = sorted({p.service for p in config.paths})
    stack = Stack(services, out / "stack", config.model_store)
    trivial = _trivial_instance(out / "stack", load_digit)
    document: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": config.command,
        "machine": report.machine(),
        "versions": report.versions(wrk.wrk_version()),
        "settings": {
            "concurrency": config.concurrency, "duration_s": config.duration_s, "warmup_s": config.warmup_s,
            "wrk_threads": config.threads, "wrk_timeout_s": config.timeout_s,
            "load_image": {"t10k_index": load_digit.index, "label": load_digit.label},
        },
        "paths": [asdict(p) | {"headers": dict(p.headers)} for p in config.paths],
    }
    _say(f"starting {', '.join(services)} (logs in {out / 'stack' / 'logs'}) ...")
    try:
        trivial.start(out / "stack", stack.run_id, {})
        stack.start(on_ready=lambda name, s: _say(f"  {name} ready after {s:.1f}s"))
        while not trivial.ready():
            time.sleep(0.1)
        checks = [precheck(p, stack.url(p.service), digits) for p in config.paths]
        document["precheck"] = [c.to_dict() for c in checks]
        failed = [c for c in checks if not c.ok]
        for c in failed:
            _say(f"pre-check FAILED on {c.path}: " + "; ".join(c.failures))
        if failed:
            raise BenchError(f"pre-check failed on {', '.join(c.path for c in failed)}")
        _say(f"pre-check: {len(checks)} paths x {len(digits)} digits answered correctly")
        document.update(_load(config, stack, trivial, load_digit, scripts))
    finally:
        trivial.stop()
        stack.stop()
        stack.remove_scratch()
    document["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    document["targets"] = report.targets(document["results"])
    report.write_json(document, out / "bench.json")
    title = (f"triserve bench: {document['machine']['cores']} cores ({document['machine']['cpu']}), "
             f"{config.duration_s:g}s per level, wrk -t{config.threads}")
    report.plot(document["results"], out / "bench.png", title)
    return document


def _load(
    config: BenchConfig, stack: Stack, trivial: Instance, digit: Digit, scripts: Path
) -> dict[str, Any]:
    levels = sorted(config.concurrency)
    per_path = config.warmup_s + config.duration_s * len(levels)
    total = per_path * len(config.paths) + config.duration_s * len(levels)
    results: list[dict[str, Any]] = []
    calibration: list[dict[str, Any]] = []
    with tqdm(total=round(total, 1), unit="s", disable=not config.progress, file=sys.stderr,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}]") as bar:
        def tick(seconds: float) -> None:
            bar.update(min(seconds, bar.total - bar.n))

        # The generator against a trivially cheap endpoint, same body and same response check.
        request = wrk.Request("POST", f"{trivial.url}/v2/models/mnist/infer", digit.v2, digit.v2_headers,
                              "text", digit.label)
        script = wrk.write_script(request, scripts, "trivial")
        for level in levels:
            bar.set_description(f"trivial c={level}")
            calibration.append({"path": "trivial", "concurrency": level,
                                **_measure(request, script, config, level, config.duration_s, tick)})
        for path in config.paths:
            body, headers = path.body(digit)
            request = wrk.Request(path.method, stack.url(path.service) + path.endpoint, body, headers,
                                  path.answer, digit.label)
            script = wrk.write_script(request, scripts, path.name)
            if config.warmup_s > 0:
                bar.set_description(f"{path.name} warm-up")
                _measure(request, script, config, levels[-1], config.warmup_s, tick)
            for level in levels:
                bar.set_description(f"{path.name} c={level}")
                row = {"path": path.name, "concurrency": level,
                       **_measure(request, script, config, level, config.duration_s, tick)}
                results.append(row)
                if row["errors"]:
                    bar.write(f"{path.name} c={level}: {row['errors']} errors, e.g. {row['sample']!r}")
    return {"generator": _generator(calibration, results), "calibration": calibration, "results": results}


def _generator(calibration: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Headroom of the load generator: trivial endpoint rate vs the best path rate, at the same level."""
    if not results:
        return {}
    best = max(results, key=lambda r: r["rps"])
    trivial = next(c for c in calibration if c["concurrency"] == best["concurrency"])
    ratio = trivial["rps"] / best["rps"] if best["rps"] else float("inf")
    return {
        "trivial_rps": trivial["rps"],
        "trivial_generator_cpu": trivial["generator_cpu"],
        "best_path": {"path": best["path"], "concurrency": best["concurrency"], "rps": best["rps"]},
        "ratio": ratio,
        "ok": ratio >= 10.0,
    }
