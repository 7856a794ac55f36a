"""The real platform for fault tests: backends started once, a gateway per test, /proc figures."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import service_processes, wait_torchserve_worker
from triserve_cli.launcher import PlatformConfig

BACKENDS = ("onnx", "paddle", "torchserve")


@dataclass
class Backends:
    """The three real backends, each a process the tests may kill, stop and restart."""

    config: PlatformConfig
    procs: dict[str, ServiceProcess]
    log_dir: Path

    @property
    def ts_management(self) -> str:
        return self.config.url(self.config.ts_management_port)

    def restart(self, name: str) -> float:
        """Start ``name`` again on its port; return when it is ready (TorchServe: worker READY)."""
        proc = self.procs[name]
        proc.start()
        if name == "torchserve":
            wait_torchserve_worker(self.ts_management, proc)
        return time.monotonic()

    def kill9(self, name: str) -> None:
        """``kill -9`` the backend's whole process group (TorchServe: frontend and workers)."""
        proc = self.procs[name].proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def signal(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs[name].proc
        assert proc is not None
        os.killpg(proc.pid, sig)

    def gateway(self, log_dir: Path, env: Mapping[str, str] | None = None) -> ServiceProcess:
        """A (not yet started) gateway in front of these backends on a fresh port."""
        config = dataclasses.replace(
            self.config, gateway_port=free_port(), management_port=free_port(), metrics_port=free_port(),
            gateway_grpc_port=free_port(),
        )
        return service_processes(config, log_dir, extra_env={"gateway": dict(env or {})})["gateway"]


def start_backends(config: PlatformConfig, log_dir: Path) -> Backends:
    procs = service_processes(config, log_dir)
    procs.pop("gateway")
    backends = Backends(config, procs, log_dir)
    ts = threading.Thread(target=procs["torchserve"].start)
    ts.start()
    procs["onnx"].start()
    procs["paddle"].start()
    ts.join()
    wait_torchserve_worker(backends.ts_management, procs["torchserve"])
    return backends


def base_url(proc: ServiceProcess) -> str:
    """The gateway's inference URL."""
    return proc.ready_url.split("/v2/")[0]


def metrics_url(proc: ServiceProcess) -> str:
    """Where the gateway's Prometheus metrics are served (its metrics listener)."""
    return f"http://127.0.0.1:{proc.env['TRISERVE_GATEWAY_METRICS_PORT']}/metrics"


def metric_values(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of ``name`` in the Prometheus text at ``url``, by sorted label pairs."""
    text = httpx.get(url, timeout=5).text
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for k, v in metric_values(url, name).items() if want <= set(k))


@dataclass
class Watch:
    """Polls a condition in a thread; records the first time it held after :meth:`arm`."""

    check: Callable[[], bool]
    period_s: float = 0.25
    armed_at: float | None = None
    seen_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def arm(self) -> None:
        self.seen_at = None
        self.armed_at = time.monotonic()

    def wait(self, timeout_s: float) -> float | None:
        """Seconds from :meth:`arm` until the condition held (None if not within ``timeout_s``)."""
        assert self.armed_at is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.check():
                    self.seen_at = time.monotonic()
                    return self.seen_at - self.armed_at
            except httpx.HTTPError:
                pass
            time.sleep(self.period_s)
        return None


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (/proc/<pid>/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def running(proc: ServiceProcess) -> Iterator[ServiceProcess]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
