"""The services a benchmark run needs, started on free ports and stopped afterwards.

Command lines and environments come from the platform launcher (:func:`triserve_cli.launcher.service_specs`),
so the benchmark starts every service exactly as ``triserve up`` does; this module only adds the
instances ``up`` has no use for: a second TorchServe in its stock configuration (the archive's
``model-config.yaml`` rewritten to TorchServe's defaults: one worker, batch size 1) and gateways with
dynamic batching forced on and off (``TRISERVE_GATEWAY_BATCHING``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from triserve_cli.launcher import (
    RUN_ID_ENV,
    PlatformConfig,
    ServiceSpec,
    log_tail,
    service_specs,
    torchserve_store,
)
from triserve_common.manifest import MANIFEST_FILE, file_entry

STOCK_MODEL_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nmaxBatchDelay: 100\nresponseTimeout: 120\n"
"""TorchServe's defaults for a model registered without options (one worker pinned, as the issue asks)."""

SERVICES = (
    "torchserve-stock", "torchserve", "onnx", "paddle", "gateway", "gateway-batching", "gateway-nobatching",
)
"""Every instance a run may need, in start order (backends before gateways)."""


class StackError(RuntimeError):
    """A service did not start; the message carries its log tail."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _torchserve_ports() -> dict[str, int]:
    """Free ports for all five TorchServe listeners (two instances run side by side)."""
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    return {f"ts_{name}_port": free_port() for name in names}


def stock_model_store(model_store: Path, target: Path, model: str = "mnist") -> Path:
    """A model store at ``target`` whose ``.mar`` has TorchServe's stock per-model config.

    The archive is copied entry by entry with ``model-config.yaml`` replaced; the copied manifest's
    ``torchserve`` entry is updated to the new archive's size and sha256 so that it still verifies.
    """
    source = torchserve_store(model_store, model)
    version_dir = target / model / source.name
    version_dir.mkdir(parents=True, exist_ok=True)
    mar = version_dir / f"{model}.mar"
    with (
        zipfile.ZipFile(source / f"{model}.mar") as src,
        zipfile.ZipFile(mar, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            data = STOCK_MODEL_CONFIG.encode() if info.filename == "model-config.yaml" else src.read(info)
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
            self.proc = subprocess.Popen(
                self.spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,
            )

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
    instances: dict[str, Instance] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def _plan(self) -> list[tuple[Instance, dict[str, str]]]:
        wanted = set(self.wanted)
        unknown = wanted - set(SERVICES)
        if unknown:
            raise StackError(f"unknown service(s) {sorted(unknown)}")
        if wanted & {"gateway", "gateway-batching", "gateway-nobatching"}:
            wanted |= {"torchserve", "onnx", "paddle"}  # a gateway needs every backend it routes to
        config = PlatformConfig.from_env(
            run_dir=self.workdir / "platform", model_store=self.model_store,
            gateway_port=free_port(), management_port=free_port(), metrics_port=free_port(),
            onnx_port=free_port(), paddle_port=free_port(), **_torchserve_ports(),
        )
        specs = {s.name: s for s in service_specs(config)}
        plan: list[tuple[Instance, dict[str, str]]] = []
        for name in SERVICES:
            if name not in wanted:
                continue
            extra: dict[str, str] = {}
            if name == "torchserve-stock":
                stock = PlatformConfig.from_env(
                    run_dir=self.workdir / "stock",
                    model_store=stock_model_store(self.model_store, self.workdir / "stock-store"),
                    **_torchserve_ports(),
                )
                spec, port = {s.name: s for s in service_specs(stock)}["torchserve"], stock.ts_inference_port
            elif name.startswith("gateway"):
                port = free_port() if name != "gateway" else config.gateway_port
                own = config if name == "gateway" else replace(  # every gateway has its own three listeners
                    config, gateway_port=port, management_port=free_port(), metrics_port=free_port()
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
        """Delete the copied stock model store (logs stay)."""
        shutil.rmtree(self.workdir / "stock-store", ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
