"""``triserve up | down | run | status``: the whole platform as local processes, no Docker.

Four services, each started as its own process session (``start_new_session``) with its log under
``<run dir>/logs/``: TorchServe (java frontend + python workers), the ONNX service, the Paddle service
and the gateway, which is told the three backend URLs. ``up`` returns once every service answers
ready (the gateway's ``/v2/health/ready`` included); ``down`` SIGTERMs each process group, waits, then
SIGKILLs what is left.

Python API (the CLI, the tests and the benchmark use it)::

    from triserve_cli.platform import Platform, PlatformConfig

    config = PlatformConfig.from_env(run_dir=tmp_path / "run", gateway_port=18080)
    with Platform(config) as platform:  # start(): launch + wait until ready; stop() on exit
        httpx.put(f"{platform.gateway_url}/predictions/mnist", content=png)

    Platform(PlatformConfig.from_env()).stop()  # stop what another process started in run/

State in the run folder: ``<service>.pid`` (the pid = process group id of each service),
``platform.json`` (URLs, log paths and the run id), ``logs/``. Every process started carries
``TRISERVE_RUN_ID=<run id>`` in its environment: ``down`` only signals processes that carry it, and
sweeps any that left their group, so it stops exactly what ``up`` started.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

from triserve_common.errors import TriserveError
from triserve_common.manifest import read_manifest, verify_artifact

#: The repository root when the CLI is installed from a checkout (``pip install -e services/cli``).
REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_ID_ENV = "TRISERVE_RUN_ID"
JAVA_MIN_VERSION = 17
TORCHSERVE_GRPC_PORTS = (7070, 7071)
"""TorchServe's built-in gRPC inference / management ports (it cannot switch gRPC off)."""
JAVA_INSTALL_HINT = (
    "apt-get install -y openjdk-17-jre-headless  (as root; or set JAVA_HOME to a JDK/JRE >= 17)"
)


class PlatformError(RuntimeError):
    """The platform could not be started or stopped; the message says why (with log tails)."""


class PlatformSettings(BaseSettings):
    """Settings of the local launcher (``triserve up``); each service keeps its own settings and prefix."""

    model_config = SettingsConfigDict(env_prefix="TRISERVE_PLATFORM_", extra="ignore")

    run_dir: Path = Path("run")
    """Folder for pid files, ``platform.json`` and ``logs/`` (relative: to the current directory)."""
    model_store: Path = REPO_ROOT / "model_store"
    """Model store every backend serves from (passed to each service)."""
    host: str = "127.0.0.1"
    """Address every service binds to."""
    ready_timeout_s: float = 300.0
    """How long ``up`` waits for every service to be ready before failing."""
    stop_timeout_s: float = 20.0
    """How long ``down`` waits after SIGTERM before SIGKILL."""


def _service_defaults() -> dict[str, Any]:
    """Default ports from the services' own settings and the gateway's routing file (env included)."""
    from triserve_gateway.config import gateway_routing
    from triserve_gateway.settings import GatewaySettings
    from triserve_onnx.settings import OnnxSettings
    from triserve_paddle.settings import PaddleSettings

    gateway = GatewaySettings()
    routing = gateway_routing(gateway)
    torchserve = routing.backends["torchserve"]
    ts_ports = {
        "ts_inference_port": torchserve.url,
        "ts_management_port": torchserve.management_url,
        "ts_metrics_port": torchserve.metrics_url,
    }
    missing = [k for k, url in ts_ports.items() if url is None or urlsplit(url).port is None]
    if missing:
        raise PlatformError(f"the gateway's routing file gives no TorchServe port for {', '.join(missing)}")
    return {
        "gateway_port": gateway.port,
        "onnx_port": OnnxSettings().port,
        "paddle_port": PaddleSettings().port,
        "settle_s": routing.health.interval_s + routing.health.timeout_s,
        **{k: int(urlsplit(url).port or 0) for k, url in ts_ports.items() if url},
    }


@dataclass(frozen=True)
class PlatformConfig:
    """Where and on which ports the platform runs; build it with :meth:`from_env`."""

    run_dir: Path
    model_store: Path
    host: str
    gateway_port: int
    onnx_port: int
    paddle_port: int
    ts_inference_port: int
    ts_management_port: int
    ts_metrics_port: int
    ready_timeout_s: float
    stop_timeout_s: float
    ts_grpc_inference_port: int = TORCHSERVE_GRPC_PORTS[0]
    ts_grpc_management_port: int = TORCHSERVE_GRPC_PORTS[1]
    settle_s: float = 0.0
    """Extra wait once all services are ready (``from_env``: the gateway's health-check period)."""
    python: str = field(default=sys.executable)

    @classmethod
    def from_env(cls, **overrides: Any) -> PlatformConfig:
        """Defaults from the settings classes (env variables included), then ``overrides`` (not None)."""
        settings = PlatformSettings()
        values: dict[str, Any] = {
            "run_dir": settings.run_dir,
            "model_store": settings.model_store,
            "host": settings.host,
            "ready_timeout_s": settings.ready_timeout_s,
            "stop_timeout_s": settings.stop_timeout_s,
            **_service_defaults(),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["run_dir"] = Path(values["run_dir"]).resolve()
        values["model_store"] = Path(values["model_store"]).resolve()
        return cls(**values)

    def url(self, port: int) -> str:
        """``http://host:port`` as a client on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{port}"

    @property
    def log_dir(self) -> Path:
        """Where every service's log goes."""
        return self.run_dir / "logs"


def torchserve_store(model_store: Path, model: str = "mnist") -> Path:
    """The folder TorchServe loads ``<model>.mar`` from: the highest version that has one."""
    versions = sorted(
        (p.parent for p in model_store.glob(f"{model}/*/{model}.mar") if p.parent.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if not versions:
        raise PlatformError(f"no {model}/<version>/{model}.mar in model store {model_store}")
    return versions[-1]


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    ready_url: str
    """Answers 200 once the service is ready."""
    port_names: Mapping[str, int]


def _runtime_service_spec(config: PlatformConfig, name: str, port: int) -> ServiceSpec:
    """An OIP v2 runtime service (``triserve_<name>``, env prefix ``TRISERVE_<NAME>_``)."""
    prefix = f"TRISERVE_{name.upper()}_"
    return ServiceSpec(
        name=name,
        argv=(config.python, "-m", f"triserve_{name}"),
        env={
            f"{prefix}HOST": config.host,
            f"{prefix}PORT": str(port),
            f"{prefix}MODEL_STORE": str(config.model_store),
        },
        ready_url=f"{config.url(port)}/v2/health/ready",
        port_names={"http": port},
    )


def service_specs(config: PlatformConfig) -> list[ServiceSpec]:
    """The four services in start order (backends first, gateway last)."""
    store = str(config.model_store)
    try:
        ts_store = torchserve_store(config.model_store)
    except PlatformError:  # reported by Platform.start(); down/status need no model
        ts_store = config.model_store
    ts_inference = config.url(config.ts_inference_port)
    onnx_url = config.url(config.onnx_port)
    paddle_url = config.url(config.paddle_port)
    return [
        ServiceSpec(
            name="torchserve",
            argv=("bash", str(REPO_ROOT / "services" / "torchserve" / "start.sh")),
            env={
                "TS_HOST": config.host,
                "TS_INFERENCE_PORT": str(config.ts_inference_port),
                "TS_MANAGEMENT_PORT": str(config.ts_management_port),
                "TS_METRICS_PORT": str(config.ts_metrics_port),
                "TS_GRPC_INFERENCE_PORT": str(config.ts_grpc_inference_port),
                "TS_GRPC_MANAGEMENT_PORT": str(config.ts_grpc_management_port),
                "TS_MODEL_STORE": str(ts_store),
                "TS_RUN_DIR": str(config.run_dir / "torchserve"),
                # start.sh runs `torchserve` from PATH: the one of this venv.
                "PATH": f"{Path(config.python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
            ready_url=f"{ts_inference}/ping",
            port_names={
                "inference": config.ts_inference_port,
                "management": config.ts_management_port,
                "metrics": config.ts_metrics_port,
                "gRPC inference": config.ts_grpc_inference_port,
                "gRPC management": config.ts_grpc_management_port,
            },
        ),
        _runtime_service_spec(config, "onnx", config.onnx_port),
        _runtime_service_spec(config, "paddle", config.paddle_port),
        ServiceSpec(
            name="gateway",
            argv=(config.python, "-m", "triserve_gateway"),
            env={
                "TRISERVE_GATEWAY_HOST": config.host,
                "TRISERVE_GATEWAY_PORT": str(config.gateway_port),
                "TRISERVE_GATEWAY_MODEL_STORE": store,
                "TRISERVE_GATEWAY_TORCHSERVE_URL": ts_inference,
                "TRISERVE_GATEWAY_TORCHSERVE_MANAGEMENT_URL": config.url(config.ts_management_port),
                "TRISERVE_GATEWAY_ONNX_URL": onnx_url,
                "TRISERVE_GATEWAY_PADDLE_URL": paddle_url,
            },
            ready_url=f"{config.url(config.gateway_port)}/v2/health/ready",
            port_names={"http": config.gateway_port},
        ),
    ]


# --- processes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    """A live (non-zombie) process carrying the run id."""

    pid: int
    pgid: int
    cmdline: str


def marked_processes(run_id: str) -> list[ProcInfo]:
    """Every live process whose environment has ``TRISERVE_RUN_ID=<run_id>`` (Linux ``/proc``)."""
    needle = f"{RUN_ID_ENV}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] in ("Z", "X"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        found.append(ProcInfo(pid=int(entry.name), pgid=int(fields[2]), cmdline=cmdline.strip()))
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def java_version(java: str | None = None) -> int | None:
    """Major version of ``$JAVA_HOME/bin/java`` or ``java`` on PATH; None when there is none."""
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or a note that there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _probe(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


# --- the platform -----------------------------------------------------------------------------------


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
            store = torchserve_store(self.config.model_store)
            try:  # the .mar TorchServe will load must be the one the manifest describes
                verify_artifact(read_manifest(store), store, "torchserve")
            except TriserveError as exc:
                raise PlatformError(exc.message) from None

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
            proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
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
                raise PlatformError(self._report(dead, "exited before the platform was ready"))
            pending = [spec for spec in pending if not _probe(spec.ready_url)]
            if not pending:
                time.sleep(self.config.settle_s)
                return
            time.sleep(0.5)
        raise PlatformError(self._report([spec.name for spec in pending], f"not ready after {timeout:.0f}s"))

    def _report(self, names: list[str], what: str) -> str:
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
                    _signal_group(pids[name], signal.SIGTERM)
                    lines.append(f"{name}: SIGTERM to process group {pids[name]}")
                else:
                    lines.append(f"{name}: not running")
            deadline = time.monotonic() + self.config.stop_timeout_s
            while (live := self._reap_and_scan(run_id)) and time.monotonic() < deadline:
                time.sleep(0.2)
            if live:
                for pgid in {p.pgid for p in live} & set(pids.values()):
                    _signal_group(pgid, signal.SIGKILL)
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
                ready = "ready" if _probe(spec.ready_url) else "not ready"
                result[spec.name] = f"running (pid {running[spec.name][0].pgid}), {ready}"
        return result

    def exited(self) -> list[str]:
        """Services started by this object whose process has exited."""
        return [name for name, proc in self._procs.items() if proc.poll() is not None]

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- command line -----------------------------------------------------------------------------------


def try_it(config: PlatformConfig) -> str:
    """The lines ``up`` prints: where things are and a curl line to try."""
    gateway = config.url(config.gateway_port)
    return "\n".join(
        [
            f"triserve is up: gateway {gateway}  (logs: {config.log_dir}/, stop: make down)",
            "Try it:",
            "  .venv/bin/triserve sample 0 > 0.png",
            f"  curl -s -T 0.png {gateway}/predictions/mnist   # prints 0",
        ]
    )


def _config(args: argparse.Namespace) -> PlatformConfig:
    return PlatformConfig.from_env(
        run_dir=args.run_dir,
        model_store=args.model_store,
        host=args.host,
        gateway_port=args.gateway_port,
        onnx_port=args.onnx_port,
        paddle_port=args.paddle_port,
        ts_inference_port=args.ts_inference_port,
        ts_management_port=args.ts_management_port,
        ts_metrics_port=args.ts_metrics_port,
        ts_grpc_inference_port=args.ts_grpc_inference_port,
        ts_grpc_management_port=args.ts_grpc_management_port,
        ready_timeout_s=getattr(args, "timeout", None),
    )


def _cmd_up(args: argparse.Namespace) -> int:
    platform = Platform(_config(args))
    status = platform.status()
    if status and all(s.endswith(", ready") for s in status.values()):
        print(f"already up ({platform.config.run_dir})")
        print(try_it(platform.config))
        return 0
    started = time.monotonic()
    try:
        platform.start()
    except PlatformError as exc:
        print(f"triserve up failed: {exc}\n(everything started was stopped)", file=sys.stderr)
        return 1
    print(f"started in {time.monotonic() - started:.1f}s")
    print(try_it(platform.config))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        lines = Platform(_config(args)).stop()
    except PlatformError as exc:
        print(f"triserve down: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    platform = Platform(_config(args))
    status = platform.status()
    for name, line in status.items():
        print(f"{name:<11} {line}")
    strays = platform.running().get("(outside its group)", [])
    for proc in strays:
        print(f"stray       pid {proc.pid}: {proc.cmdline[:100]}")
    return 0 if all(s.endswith(", ready") for s in status.values()) else 3


def _cmd_run(args: argparse.Namespace) -> int:
    platform = Platform(_config(args))
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        platform.start()
        print(try_it(platform.config).replace("make down", "Ctrl-C"), flush=True)
        while not (dead := platform.exited()):
            time.sleep(0.5)
        print(platform._report(dead, "exited"), file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
    except PlatformError as exc:
        print(f"triserve run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("\n".join(platform.stop()), file=sys.stderr)
    return code


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, help="pid files, platform.json, logs/ (default run/)")
    parser.add_argument("--model-store", type=Path, help="model store for every backend")
    parser.add_argument("--host", help="address every service binds to (default 127.0.0.1)")
    for flag, what in (
        ("--gateway-port", "gateway"),
        ("--onnx-port", "ONNX service"),
        ("--paddle-port", "Paddle service"),
        ("--ts-inference-port", "TorchServe inference API"),
        ("--ts-management-port", "TorchServe management API"),
        ("--ts-metrics-port", "TorchServe metrics API"),
        ("--ts-grpc-inference-port", "TorchServe gRPC inference API"),
        ("--ts-grpc-management-port", "TorchServe gRPC management API"),
    ):
        parser.add_argument(flag, type=int, help=f"port of the {what}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``up``, ``down``, ``run`` and ``status``."""
    commands = (
        ("up", _cmd_up, "start the platform in the background and wait until it is ready"),
        ("run", _cmd_run, "start the platform in the foreground; Ctrl-C stops it"),
        ("down", _cmd_down, "stop what `up` started (by pid files)"),
        ("status", _cmd_status, "show which services run and are ready (exit 3 unless all are)"),
    )
    for name, func, text in commands:
        parser = subparsers.add_parser(name, help=text, description=text)
        _add_common(parser)
        if name in ("up", "run"):
            parser.add_argument("--timeout", type=float, help="seconds to wait for ready (default 300)")
        parser.set_defaults(func=func)


# --- configuration reference (README) ----------------------------------------------------------------

README_BEGIN = "<!-- BEGIN config-reference: generated by `make readme` from the settings classes -->"
README_END = "<!-- END config-reference -->"


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    """Every settings class of the platform, with a title, in README order."""
    from triserve_gateway.settings import GatewaySettings
    from triserve_onnx.settings import OnnxSettings
    from triserve_paddle.settings import PaddleSettings

    return [
        ("Gateway (`triserve-gateway`)", GatewaySettings),
        ("ONNX service (`triserve-onnx`)", OnnxSettings),
        ("Paddle service (`triserve-paddle`)", PaddleSettings),
        ("Local launcher (`triserve up` / `make up`)", PlatformSettings),
    ]


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after ``name: type = value``), base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _show_default(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, Path):
        with contextlib.suppress(ValueError):
            value = value.relative_to(REPO_ROOT) if value.is_absolute() else value
        return f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        return f"`{','.join(map(str, value))}`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def config_reference() -> str:
    """Markdown tables: every setting, its env variable, default and meaning."""
    lines: list[str] = []
    for title, cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        docs = field_docs(cls)
        lines += [f"#### {title}", "", "| env variable | default | meaning |", "| --- | --- | --- |"]
        for name, info in cls.model_fields.items():
            default = info.get_default(call_default_factory=True)
            meaning = (info.description or docs.get(name, "")).replace("|", "\\|")
            lines.append(f"| `{prefix}{name.upper()}` | {_show_default(default)} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def readme_with_reference(text: str) -> str:
    """``text`` with the block between the config-reference markers replaced by :func:`config_reference`."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"README has no {README_BEGIN!r} ... {README_END!r} block")
    return text[: begin + len(README_BEGIN)] + "\n" + config_reference() + text[end:]


def main(argv: list[str] | None = None) -> int:
    """``python -m triserve_cli.platform --write-readme README.md``: refresh the configuration reference."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write-readme", type=Path, required=True)
    args = parser.parse_args(argv)
    path: Path = args.write_readme
    path.write_text(readme_with_reference(path.read_text()))
    print(f"updated the configuration reference in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
