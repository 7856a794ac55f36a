""":class:`Platform`: start, watch and stop the services of one run folder (pid files, ``platform.json``,
readiness, SIGTERM then SIGKILL, strays swept by run id)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from triserve_cli.launcher.config import (
    JAVA_INSTALL_HINT,
    JAVA_MIN_VERSION,
    RUN_ID_ENV,
    PlatformConfig,
    PlatformError,
)
from triserve_cli.launcher.processes import (
    ProcInfo,
    java_version,
    log_tail,
    marked_processes,
    port_in_use,
    probe,
    signal_group,
    spawn,
)
from triserve_cli.launcher.specs import ServiceSpec, service_specs, verify_torchserve_archives


class Platform:
    """Start, watch and stop the four services of one run folder."""

    def __init__(self, config: PlatformConfig, specs: list[ServiceSpec] | None = None) -> None:
        """``specs``: the services to run (default :func:`service_specs`; the last one is the entry point)."""
        self.config = config
        self.specs = service_specs(config) if specs is None else specs
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # paths and state

    @property
    def gateway_url(self) -> str:
        """Base URL of the gateway."""
        return self.config.url(self.config.gateway_port)

    @property
    def state_path(self) -> Path:
        """``platform.json``: run id, URLs and log paths of the run in progress."""
        return self.config.run_dir / "platform.json"

    def pid_path(self, name: str) -> Path:
        """Pid file of one service (its pid is also its process group id)."""
        return self.config.run_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        """Log file of one service (stdout + stderr)."""
        return self.config.log_dir / f"{name}.log"

    def _state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return state

    def _recorded_pids(self) -> dict[str, int]:
        pids = {}
        for spec in self.specs:
            with contextlib.suppress(OSError, ValueError):
                pids[spec.name] = int(self.pid_path(spec.name).read_text().strip())
        return pids

    def running(self) -> dict[str, list[ProcInfo]]:
        """Live processes of the recorded run, by service (empty lists for stopped services)."""
        state = self._state()
        if state is None:
            return {}
        procs = marked_processes(str(state["run_id"]))
        result: dict[str, list[ProcInfo]] = {}
        for name, pid in self._recorded_pids().items():
            result[name] = [p for p in procs if p.pgid == pid]
        grouped = {p.pid for members in result.values() for p in members}
        strays = [p for p in procs if p.pid not in grouped]
        if strays:
            result["(outside its group)"] = strays
        return result

    # start

    def _preflight(self) -> None:
        if any(self.running().values()):
            raise PlatformError(
                f"a platform from {self.config.run_dir} is still running; stop it first (make down)"
            )
        busy = [
            f"{spec.name} {what} port {port}"
            for spec in self.specs
            for what, port in spec.port_names.items()
            if port_in_use(self.config.host, port)
        ]
        if busy:
            raise PlatformError(
                "ports already in use: " + ", ".join(busy) + " (another platform? `make down`, or choose "
                "other ports: triserve up --help)"
            )
        if not self.config.model_store.is_dir():
            raise PlatformError(f"model store {self.config.model_store} does not exist")
        if any(spec.name == "torchserve" for spec in self.specs):
            version = java_version()
            if version is None or version < JAVA_MIN_VERSION:
                found = "no java" if version is None else f"java {version}"
                raise PlatformError(
                    f"TorchServe needs Java >= {JAVA_MIN_VERSION}, {found}: {JAVA_INSTALL_HINT}"
                )
            verify_torchserve_archives(self.config.model_store)

    def start(self) -> Platform:
        """Launch every service, then wait until the gateway is ready; on failure stop all and raise."""
        self._preflight()
        run_id = uuid.uuid4().hex
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "run_id": run_id,
            "started_at": time.time(),
            "config": {k: str(v) for k, v in asdict(self.config).items()},
            "gateway_url": self.gateway_url,
            "services": {
                s.name: {"ready_url": s.ready_url, "log": str(self.log_path(s.name))} for s in self.specs
            },
        }
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")
        try:
            for spec in self.specs:
                self._launch(spec, run_id)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, spec: ServiceSpec, run_id: str) -> None:
        env = {**os.environ, **spec.env, RUN_ID_ENV: run_id, "PYTHONUNBUFFERED": "1"}
        workdir = self.config.run_dir / spec.name
        workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path(spec.name).open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.argv)}\n".encode())
            log.flush()
            proc = spawn(spec.argv, env, workdir, log)
        self._procs[spec.name] = proc
        self.pid_path(spec.name).write_text(f"{proc.pid}\n")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every service answers ready (gateway included); raise with the failing ones' log tails.

        Then waits ``config.settle_s`` (one gateway health-check period), so that the gateway has seen
        every backend healthy and a request forced to any backend succeeds.
        """
        timeout = self.config.ready_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        pending = list(self.specs)
        while time.monotonic() < deadline:
            dead = [name for name, proc in self._procs.items() if proc.poll() is not None]
            if dead:
                raise PlatformError(self.report(dead, "exited before the platform was ready"))
            pending = [spec for spec in pending if not probe(spec.ready_url)]
            if not pending:
                time.sleep(self.config.settle_s)
                return
            time.sleep(0.5)
        raise PlatformError(self.report([spec.name for spec in pending], f"not ready after {timeout:.0f}s"))

    def report(self, names: list[str], what: str) -> str:
        """``names`` + ``what``, with each named service's ready URL, exit code and log tail."""
        parts = [f"{', '.join(names)} {what}"]
        for spec in self.specs:
            if spec.name in names:
                proc = self._procs.get(spec.name)
                code = "" if proc is None or proc.poll() is None else f" (exit code {proc.returncode})"
                log = self.log_path(spec.name)
                parts.append(f"--- {spec.name}{code}, {spec.ready_url}; last lines of {log}:")
                parts.append(log_tail(log))
        return "\n".join(parts)

    # stop

    def stop(self) -> list[str]:
        """SIGTERM each recorded process group (gateway first), SIGKILL what is left after the timeout.

        Returns a line per service; removes the pid files and ``platform.json``.
        """
        state = self._state()
        pids = self._recorded_pids()
        lines: list[str] = []
        if state is not None:
            run_id = str(state["run_id"])
            live = marked_processes(run_id)
            for name in reversed(list(pids)):
                if any(p.pgid == pids[name] for p in live):
                    signal_group(pids[name], signal.SIGTERM)
                    lines.append(f"{name}: SIGTERM to process group {pids[name]}")
                else:
                    lines.append(f"{name}: not running")
            deadline = time.monotonic() + self.config.stop_timeout_s
            while (live := self._reap_and_scan(run_id)) and time.monotonic() < deadline:
                time.sleep(0.2)
            if live:
                for pgid in {p.pgid for p in live} & set(pids.values()):
                    signal_group(pgid, signal.SIGKILL)
                for proc in live:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(proc.pid, signal.SIGKILL)
                lines.append(
                    f"SIGKILL after {self.config.stop_timeout_s:.0f}s: "
                    + ", ".join(f"{p.pid} ({p.cmdline[:60]})" for p in live)
                )
                deadline = time.monotonic() + 10
                while (live := self._reap_and_scan(run_id)) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if live:
                    raise PlatformError("still running after SIGKILL: " + ", ".join(str(p.pid) for p in live))
        else:
            lines.append(f"nothing recorded in {self.config.run_dir}")
        for spec in self.specs:
            self.pid_path(spec.name).unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        self._procs.clear()
        return lines

    def _reap_and_scan(self, run_id: str) -> list[ProcInfo]:
        for proc in self._procs.values():
            proc.poll()
        return marked_processes(run_id)

    # status / foreground

    def status(self) -> dict[str, str]:
        """``running, ready`` / ``running, not ready`` / ``stopped`` per service."""
        running = self.running()
        result = {}
        for spec in self.specs:
            if not running.get(spec.name):
                result[spec.name] = "stopped"
            else:
                ready = "ready" if probe(spec.ready_url) else "not ready"
                result[spec.name] = f"running (pid {running[spec.name][0].pgid}), {ready}"
        return result

    def exited(self) -> list[str]:
        """Services started by this object whose process has exited."""
        return [name for name, proc in self._procs.items() if proc.poll() is not None]

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
