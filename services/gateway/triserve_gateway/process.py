"""Which gateway process this is (:class:`ProcessRole`), and the metrics registry its listener exposes.

With ``TRISERVE_GATEWAY_WORKERS=1`` the gateway is one process and every default here is that
process. With N > 1 (:mod:`triserve_gateway.workers`) process 0 (the *primary*) serves all three
listeners and owns the model registry; processes 1..N-1 serve the inference listener and mirror the
registry (:mod:`triserve_gateway.registry_sync`). All of them write their Prometheus values to
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode), which the primary's metrics
listener sums (:func:`metrics_registry`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from triserve_gateway.torchserve_metrics import torchserve_family


@dataclass(frozen=True)
class ProcessRole:
    """This process's place among the gateway's processes."""

    index: int = 0
    """0 = the primary (management, metrics, registry owner); 1..count-1 = inference followers."""
    count: int = 1
    """How many gateway processes serve the inference port."""
    run_dir: Path | None = None
    """This gateway run's directory (registry snapshot, acknowledgements); None with one process."""
    metrics_dir: Path | None = None
    """``PROMETHEUS_MULTIPROC_DIR`` of this run; None with one process."""
    primary_pid: int = 0
    """The primary's pid (a follower whose parent is gone stops)."""

    @property
    def primary(self) -> bool:
        """Whether this process serves management and metrics and owns the registry."""
        return self.index == 0

    @property
    def multiprocess(self) -> bool:
        """Whether the gateway runs as several processes."""
        return self.count > 1

    @property
    def registry_dir(self) -> Path:
        """Where the primary writes the registry snapshot and the followers their acknowledgements."""
        if self.run_dir is None:
            raise RuntimeError("a single gateway process has no registry directory")
        return self.run_dir / "registry"


class _MultiProcessView(Collector):
    """Every process's values summed (prometheus-client's :class:`MultiProcessCollector`), with the
    TorchServe-named families given their TorchServe types back."""

    def __init__(self, path: Path) -> None:
        self.collector = MultiProcessCollector(None, str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for metric in self.collector.collect():  # type: ignore[no-untyped-call]
            yield torchserve_family(metric)


def metrics_registry(process_registry: CollectorRegistry, role: ProcessRole) -> CollectorRegistry:
    """What ``GET /metrics`` exposes: this process's registry, or with several processes every
    process's values read from the multiprocess directory."""
    if not role.multiprocess or role.metrics_dir is None:
        return process_registry
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_MultiProcessView(role.metrics_dir))
    return registry
