"""The services a benchmark run needs, started on free ports and stopped afterwards.

Command lines and environments come from the platform launcher (:func:`triserve_cli.launcher.service_specs`),
so the benchmark starts every service exactly as ``triserve up`` does; this module only adds the
instances ``up`` has no use for: a TorchServe in its stock configuration (the archive's
``model-config.yaml`` rewritten to TorchServe's defaults: one worker, batch size 1), a TorchServe tuned
as its docs advise (:class:`TorchServeTuning`) and gateways with dynamic batching forced on and off
(``TRISERVE_GATEWAY_BATCHING``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import httpx

from triserve_cli.bench.paths import FP32_VERSION
from triserve_cli.launcher import (
    RUN_ID_ENV,
    PlatformConfig,
    ServiceSpec,
    log_tail,
    service_specs,
    torchserve_store,
)
from triserve_cli.launcher.processes import spawn
from triserve_common.manifest import MANIFEST_FILE, file_entry
from triserve_common.paths import REPO_ROOT
from triserve_common.ports import free_port
from triserve_gateway.cpus import WorkerChoice, resolve_workers

STOCK_MODEL_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nmaxBatchDelay: 100\nresponseTimeout: 120\n"
"""TorchServe's defaults for a model registered without options (one worker pinned, as the issue asks)."""

QUIET_LOG_CONFIG = REPO_ROOT / "services" / "torchserve" / "log4j2-quiet.xml"


@dataclass(frozen=True)
class TorchServeTuning:
    """TorchServe configured as its performance guide advises, for the ``torchserve-tuned`` path.

    Per model (the archive's ``model-config.yaml``): ``workers`` (min = max), ``batch_size`` and
    ``max_batch_delay_ms``, chosen by the sweep in BENCHMARKS.md. Always: the frontend logs warnings
    only, no access log and no per-request metric lines (``services/torchserve/log4j2-quiet.xml``),
    asynchronous logging, no system-metrics collector. PNG bodies go through the archive's own handler.
    """

    workers: int = 1
    batch_size: int = 16
    max_batch_delay_ms: int = 5

    def model_config(self) -> str:
        """The archive's ``model-config.yaml``."""
        return (
            f"minWorkers: {self.workers}\nmaxWorkers: {self.workers}\nbatchSize: {self.batch_size}\n"
            f"maxBatchDelay: {self.max_batch_delay_ms}\nresponseTimeout: 120\n"
        )

    @staticmethod
    def env() -> dict[str, str]:
        """Environment of the instance (``start.sh`` and TorchServe's ``TS_<PROPERTY>`` overrides)."""
        return {
            "TS_LOG_CONFIG": str(QUIET_LOG_CONFIG),
            "TS_ASYNC_LOGGING": "true",
            "TS_DISABLE_SYSTEM_METRICS": "true",
        }

    @classmethod
    def parse(cls, text: str) -> TorchServeTuning:
        """``workers=2,batch_size=8,max_batch_delay_ms=5`` (any subset; the rest keeps its default)."""
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in {f.name for f in fields(cls)}:
                names = ", ".join(f.name for f in fields(cls))
                raise ValueError(f"expected NAME=INT pairs with NAME one of {names}, got {item!r}")
            try:
                values[key.strip()] = int(value)
            except ValueError:
                raise ValueError(f"{key.strip()} must be an integer, got {value!r}") from None
        tuning = cls(**values)
        if min(tuning.workers, tuning.batch_size) < 1 or tuning.max_batch_delay_ms < 0:
            raise ValueError(f"workers and batch_size must be >= 1, max_batch_delay_ms >= 0: {tuning}")
        return tuning


SERVICES = (
    "torchserve-stock",
    "torchserve-tuned",
    "torchserve",
    "onnx",
    "paddle",
    "gateway",
    "gateway-batching",
    "gateway-nobatching",
)
"""Every instance a run may need, in start order (backends before gateways)."""


class StackError(RuntimeError):
    """A service did not start; the message carries its log tail."""


def _torchserve_ports() -> dict[str, int]:
    """Free ports for all five TorchServe listeners (two instances run side by side)."""
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    return {f"ts_{name}_port": free_port() for name in names}


def stock_model_store(
    model_store: Path,
    target: Path,
    model: str = "mnist",
    model_config: str = STOCK_MODEL_CONFIG,
    version: str = FP32_VERSION,
) -> Path:
    """A model store at ``target`` whose ``.mar`` (``model``/``version``) has ``model_config``
    (default: TorchServe's stock per-model config) as its ``model-config.yaml``.

    The archive is copied entry by entry with ``model-config.yaml`` replaced; the copied manifest's
    ``torchserve`` entry is updated to the new archive's size and sha256 so that it still verifies.
    """
    source = torchserve_store(model_store, model, version)
    version_dir = target / model / source.name
    version_dir.mkdir(parents=True, exist_ok=True)
    mar = version_dir / f"{model}.mar"
    with (
        zipfile.ZipFile(source / f"{model}.mar") as src,
        zipfile.ZipFile(mar, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            data = model_config.encode() if info.filename == "model-config.yaml" else src.read(info)
            dst.writestr(info, data)
    manifest_path = source / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        artifact = manifest.get("artifacts", {}).get("torchserve")
        if artifact is not None:
            artifact["files"] = [
                file_entry(version_dir, mar).model_dump() if f["path"] == mar.name else f
                for f in artifact["files"]
            ]
        (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return target


@dataclass
class Instance:
    """One running service: its process, base URL and log."""

    name: str
    spec: ServiceSpec
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, workdir: Path, run_id: str, extra_env: Mapping[str, str]) -> None:
        """Launch in its own session (so the whole process group can be stopped)."""
        env = {**os.environ, **self.spec.env, **extra_env, RUN_ID_ENV: run_id}
        for key in ("TMPDIR", "LOG_LOCATION", "METRICS_LOCATION"):
            if key in env and key in {**self.spec.env, **extra_env}:
                Path(env[key]).mkdir(parents=True, exist_ok=True)
        cwd = workdir / self.name
        cwd.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = spawn(self.spec.argv, env, cwd, log)

    def ready(self) -> bool:
        """Whether its readiness URL answers 200; raises when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise StackError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        if self.spec.ready_url is None:
            return True
        try:
            return httpx.get(self.spec.ready_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log."""
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class Stack:
    """The instances named in ``wanted`` (see :data:`SERVICES`), on free ports under ``workdir``."""

    wanted: Iterable[str]
    workdir: Path
    model_store: Path
    ready_timeout_s: float = 300.0
    torchserve_tuning: TorchServeTuning = field(default_factory=TorchServeTuning)
    gateway_workers: int | None = None
    """Processes of every gateway instance (None: ``TRISERVE_GATEWAY_WORKERS``, else its default, auto)."""
    instances: dict[str, Instance] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def gateway_workers_used(self) -> WorkerChoice:
        """Processes of each gateway instance in this run, resolved as the gateway does (0 = auto)."""
        return resolve_workers(PlatformConfig.from_env(gateway_workers=self.gateway_workers).gateway_workers)

    def _plan(self) -> list[tuple[Instance, dict[str, str]]]:
        wanted = set(self.wanted)
        unknown = wanted - set(SERVICES)
        if unknown:
            raise StackError(f"unknown service(s) {sorted(unknown)}")
        if wanted & {"gateway", "gateway-batching", "gateway-nobatching"}:
            wanted |= {"torchserve", "onnx", "paddle"}  # a gateway needs every backend it routes to
        config = PlatformConfig.from_env(
            run_dir=self.workdir / "platform",
            model_store=self.model_store,
            gateway_port=free_port(),
            management_port=free_port(),
            metrics_port=free_port(),
            gateway_grpc_port=free_port(),
            gateway_workers=self.gateway_workers,
            onnx_port=free_port(),
            paddle_port=free_port(),
            **_torchserve_ports(),
        )
        specs = {s.name: s for s in service_specs(config)}
        plan: list[tuple[Instance, dict[str, str]]] = []
        for name in SERVICES:
            if name not in wanted:
                continue
            extra: dict[str, str] = {}
            if name in ("torchserve-stock", "torchserve-tuned"):
                tuned = name == "torchserve-tuned"
                model_config = self.torchserve_tuning.model_config() if tuned else STOCK_MODEL_CONFIG
                own_store = self.workdir / f"{name.removeprefix('torchserve-')}-store"
                own = PlatformConfig.from_env(
                    run_dir=self.workdir / name.removeprefix("torchserve-"),
                    model_store=stock_model_store(self.model_store, own_store, model_config=model_config),
                    **_torchserve_ports(),
                )
                spec, port = {s.name: s for s in service_specs(own)}["torchserve"], own.ts_inference_port
                if tuned:
                    extra.update(self.torchserve_tuning.env())
            elif name.startswith("gateway"):
                port = free_port() if name != "gateway" else config.gateway_port
                own = (
                    config
                    if name == "gateway"
                    else replace(  # every gateway has its own listeners
                        config, gateway_port=port, management_port=free_port(), metrics_port=free_port(),
                        gateway_grpc_port=free_port(),
                    )
                )
                spec = {s.name: s for s in service_specs(own)}["gateway"]
                if name != "gateway":
                    extra["TRISERVE_GATEWAY_BATCHING"] = "true" if name == "gateway-batching" else "false"
            else:
                spec = specs[name]
                port = config.ts_inference_port if name == "torchserve" else spec.port_names["http"]
            log = self.workdir / "logs" / f"{name}.log"
            plan.append((Instance(name, spec, config.url(port), log), extra))
        return plan

    def start(self, on_ready: Callable[[str, float], None] | None = None) -> Stack:
        """Start every instance (all at once), then wait until each is ready; stop all on failure."""
        started = time.monotonic()
        try:
            for instance, extra in self._plan():
                self.instances[instance.name] = instance
                instance.start(self.workdir, self.run_id, extra)
            pending = dict(self.instances)
            deadline = started + self.ready_timeout_s
            while pending:
                for name, instance in list(pending.items()):
                    if instance.ready():
                        del pending[name]
                        if on_ready is not None:
                            on_ready(name, time.monotonic() - started)
                if pending and time.monotonic() > deadline:
                    tails = "\n".join(f"--- {n}:\n{i.log_tail()}" for n, i in pending.items())
                    names = ", ".join(pending)
                    raise StackError(f"not ready after {self.ready_timeout_s:.0f}s: {names}\n{tails}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise
        return self

    def url(self, service: str) -> str:
        """Base URL of a started instance."""
        return self.instances[service].url

    def stop(self) -> None:
        """Stop every instance, gateways first."""
        for instance in reversed(list(self.instances.values())):
            instance.stop()

    def remove_scratch(self) -> None:
        """Delete the copied stock and tuned model stores (logs stay)."""
        for name in ("stock-store", "tuned-store"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
