"""One benchmark run: start the services, pre-check every path, calibrate wrk, measure, report."""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from triserve_cli.bench import cpu, report, targets, wrk
from triserve_cli.bench.check import precheck
from triserve_cli.bench.paths import BenchPath
from triserve_cli.bench.payloads import LOAD_INDEX, SWEEP_INDICES, Digit, load_digits
from triserve_cli.bench.stack import Instance, Stack, TorchServeTuning
from triserve_cli.launcher import ServiceSpec
from triserve_common.paths import REPO_ROOT
from triserve_common.ports import free_port

DEFAULT_CONCURRENCY = (1, 8, 32, 64)
SETTLE_MIN_S, SETTLE_MAX_S = 0.2, 5.0
"""Pause after each wrk run: twice its slowest response, within these bounds."""


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
    max_foreign_cpu: float = 0.25
    """Cores used by other processes above which a measurement is repeated."""
    retries: int = 2
    """How many times a disturbed measurement is repeated."""
    torchserve_tuning: TorchServeTuning = field(default_factory=TorchServeTuning)
    """Per-model config of the ``torchserve-tuned`` instance."""
    gateway_workers: int | None = None
    """Processes of each gateway instance (None: the gateway's setting, by default auto)."""
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


@dataclass
class _Meter:
    """Runs wrk and accounts for the cores used meanwhile by the services, by wrk and by anything else."""

    config: BenchConfig
    pgids: list[int]
    bar: tqdm[Any]

    def tick(self, seconds: float) -> None:
        self.bar.update(min(seconds, self.bar.total - self.bar.n))

    def measure(
        self, request: wrk.Request, script: Path, connections: int, seconds: float, retries: int | None = None
    ) -> dict[str, Any]:
        """One measurement; repeated while foreign load exceeds ``max_foreign_cpu`` (at most ``retries``
        more times, the config's by default), keeping the least disturbed attempt."""
        retries = self.config.retries if retries is None else retries
        best: dict[str, Any] | None = None
        for attempt in range(1, retries + 2):
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            before = cpu.Sample.take(self.pgids)
            result = wrk.run(
                script,
                request.url,
                connections,
                seconds,
                self.config.threads,
                self.config.timeout_s,
                self.tick,
            )
            after = cpu.Sample.take(self.pgids)
            reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
            generator_s = (reaped.ru_utime - usage.ru_utime) + (reaped.ru_stime - usage.ru_stime)
            row: dict[str, Any] = {
                **result.to_dict(),
                "attempts": attempt,
                **cpu.split(before, after, generator_s, result.duration_s or seconds),
            }
            # wrk stops with requests in flight; let the service drain them before the next run (a queue
            # still full of abandoned requests would reject the next run's, e.g. TorchServe's 503).
            time.sleep(min(SETTLE_MAX_S, max(SETTLE_MIN_S, 2 * result.max_ms / 1000)))
            if best is None or row["foreign_cpu"] < best["foreign_cpu"]:
                best = row
            if row["foreign_cpu"] <= self.config.max_foreign_cpu or attempt > retries:
                break
            self.bar.total += seconds  # one more attempt
            self.bar.refresh()
        assert best is not None
        best["attempts"] = attempt
        return best


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _settings(config: BenchConfig, load_digit: Digit, stack: Stack) -> dict[str, Any]:
    """The run's settings as the JSON document records them."""
    workers = stack.gateway_workers_used()
    return {
        "concurrency": config.concurrency,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "wrk_threads": config.threads,
        "wrk_timeout_s": config.timeout_s,
        "max_foreign_cpu": config.max_foreign_cpu,
        "retries": config.retries,
        "load_image": {"t10k_index": load_digit.index, "label": load_digit.label},
        "torchserve_tuned": asdict(config.torchserve_tuning),
        "gateway_workers": workers.count,
        "gateway_workers_reason": workers.reason,
    }


def _precheck_all(config: BenchConfig, stack: Stack, digits: list[Digit]) -> list[dict[str, Any]]:
    """Every path answers every digit correctly before anything is measured (BenchError otherwise)."""
    checks = [precheck(p, stack.url(p.service), digits) for p in config.paths]
    failed = [c for c in checks if not c.ok]
    for c in failed:
        _say(f"pre-check FAILED on {c.path}: " + "; ".join(c.failures))
    if failed:
        raise BenchError(f"pre-check failed on {', '.join(c.path for c in failed)}")
    _say(f"pre-check: {len(checks)} paths x {len(digits)} digits answered correctly")
    return [c.to_dict() for c in checks]


def _write_outputs(config: BenchConfig, document: dict[str, Any]) -> None:
    """``bench.json``, ``bench.png`` and ``bench.md`` into ``out_dir``."""
    out = config.out_dir
    report.write_json(document, out / "bench.json")
    title = (
        f"triserve bench: {document['machine']['cores']} cores ({document['machine']['cpu']}), "
        f"{config.duration_s:g}s per level, wrk -t{config.threads}"
    )
    report.plot(document["results"], out / "bench.png", title)
    (out / "bench.md").write_text(report.markdown(document) + "\n")


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the whole benchmark; return the JSON document (also written, with the PNG, to ``out_dir``)."""
    started = datetime.now(UTC)
    work = config.out_dir / "run"  # wrk scripts and bodies, service logs, the stock model store (git-ignored)
    digits = load_digits(SWEEP_INDICES, config.mnist_dir, config.model_store)
    load_digit = next(d for d in digits if d.index == LOAD_INDEX)
    services = sorted({p.service for p in config.paths})
    stack = Stack(services, work, config.model_store, torchserve_tuning=config.torchserve_tuning,
                  gateway_workers=config.gateway_workers)
    trivial = _trivial_instance(work, load_digit)
    document: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": config.command,
        "machine": {**report.machine(), "loadavg_at_start": list(os.getloadavg())},
        "versions": report.versions(wrk.wrk_version()),
        "git": report.git_state(REPO_ROOT),
        "python_path": os.environ.get("PYTHONPATH", ""),
        "settings": _settings(config, load_digit, stack),
        "paths": [asdict(p) | {"headers": dict(p.headers)} for p in config.paths],
    }
    _say(f"starting {', '.join(services)} (logs in {work / 'logs'}) ...")
    try:
        trivial.start(work, stack.run_id, {})
        stack.start(on_ready=lambda name, s: _say(f"  {name} ready after {s:.1f}s"))
        deadline = time.monotonic() + 30
        while not trivial.ready():
            if time.monotonic() > deadline:
                raise BenchError(f"trivial endpoint not ready:\n{trivial.log_tail()}")
            time.sleep(0.1)
        document["precheck"] = _precheck_all(config, stack, digits)
        document.update(_load(config, stack, trivial, load_digit, work / "wrk"))
    finally:
        trivial.stop()
        stack.stop()
        stack.remove_scratch()
    document["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    document["machine"]["loadavg_at_end"] = list(os.getloadavg())
    document["targets"] = targets.targets(document["results"])
    _write_outputs(config, document)
    return document


def _load(
    config: BenchConfig, stack: Stack, trivial: Instance, digit: Digit, scripts: Path
) -> dict[str, Any]:
    levels = sorted(config.concurrency)
    pgids = [i.proc.pid for i in [*stack.instances.values(), trivial] if i.proc is not None]
    per_path = config.warmup_s + config.duration_s * len(levels)
    total = per_path * len(config.paths) + config.duration_s * len(levels)
    results: list[dict[str, Any]] = []
    calibration: list[dict[str, Any]] = []
    with tqdm(
        total=round(total, 1),
        unit="s",
        disable=not config.progress,
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}]",
    ) as bar:
        meter = _Meter(config, pgids, bar)
        # The generator against a trivially cheap endpoint, same body and same response check.
        request = wrk.Request(
            "POST", f"{trivial.url}/v2/models/mnist/infer", digit.v2, digit.v2_headers, "text", digit.label
        )
        script = wrk.write_script(request, scripts, "trivial")
        for level in levels:
            bar.set_description(f"trivial c={level}")
            row = meter.measure(request, script, level, config.duration_s)
            calibration.append({"path": "trivial", "concurrency": level, **row})
        for path in config.paths:
            body, headers = path.body(digit)
            request = wrk.Request(
                path.method, stack.url(path.service) + path.endpoint, body, headers, path.answer, digit.label
            )
            script = wrk.write_script(request, scripts, path.name)
            if config.warmup_s > 0:
                bar.set_description(f"{path.name} warm-up")
                meter.measure(request, script, levels[-1], config.warmup_s, retries=0)
            for level in levels:
                bar.set_description(f"{path.name} c={level}")
                row = meter.measure(request, script, level, config.duration_s)
                results.append({"path": path.name, "concurrency": level, **row})
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
