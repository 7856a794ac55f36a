"""The real platform (TorchServe, ONNX and Paddle services, gateway) on free ports, once for the
hostile-input tests, with the gateway's default limits and round-robin routing (so automatic
routing reaches every backend), and what the tests measure on it: RSS, breakers, metrics, logs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mnist import Digits, one_per_digit
from tests.support.procs import ServiceProcess
from tests.support.stack import free_port_config, service_processes, start_platform, wait_torchserve_worker
from triserve_common.manifest import read_manifest

BACKENDS = ("onnx", "paddle", "torchserve")


@dataclass
class LivePlatform:
    gateway: str
    metrics_url: str
    """The gateway's metrics listener."""
    procs: dict[str, ServiceProcess]
    digits: Digits
    """One held-out image per digit (``one_per_digit``)."""

    @property
    def gateway_pid(self) -> int:
        proc = self.procs["gateway"].proc
        assert proc is not None
        return proc.pid

    def rss(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the gateway process in bytes (VmRSS, VmHWM)."""
        fields = {}
        for line in Path(f"/proc/{self.gateway_pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]

    def reset_peak_rss(self) -> bool:
        """Restart the kernel's peak-RSS count (VmHWM) of the gateway; False when not allowed."""
        try:
            Path(f"/proc/{self.gateway_pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def backends_up(self) -> dict[str, float]:
        """Per backend: the gateway's ``backend_up`` (1 = passes health checks, breaker not open)."""
        return {name: self.metric("triserve_gateway_backend_up", backend=name) for name in BACKENDS}

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the gateway's samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(f"{self.metrics_url}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def gateway_log(self) -> str:
        return self.procs["gateway"].log_path.read_text(errors="replace")


@pytest.fixture(scope="package")
def live(
    service_logs: Path, model_store: Path, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LivePlatform]:
    config = free_port_config(tmp_path_factory.mktemp("hostile-run"), model_store)
    logs = service_logs / "hostile"
    procs = service_processes(
        config,
        logs,
        extra_env={
            "gateway": {
                "TRISERVE_GATEWAY_STRATEGY": "round-robin",
                "TRISERVE_GATEWAY_HEALTH_INTERVAL_S": "0.5",
            }
        },
        timeout=180,
    )
    digits = one_per_digit(mnist_dir, read_manifest(model_store / "mnist" / "1"))
    try:
        start_platform(config, procs, lambda url, ts: wait_torchserve_worker(url, ts, timeout=180))
        yield LivePlatform(config.url(config.gateway_port), config.url(config.metrics_port), procs, digits)
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()
