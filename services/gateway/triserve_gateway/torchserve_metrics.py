"""TorchServe's frontend metric names, counting what the gateway served.

A TorchServe user's dashboards and alerts read these series from TorchServe 0.12's metrics API
(``metrics_mode=prometheus``; names and dimensions from TorchServe's ``ts/configs/metrics.yaml``):

=================================== ============================================ =====================
series                              labels                                       counts
=================================== ============================================ =====================
``Requests2XX``                     ``Level="Host"``, ``Hostname``               responses 200-399
``Requests4XX``                     ``Level="Host"``, ``Hostname``               responses 400-499
``Requests5XX``                     ``Level="Host"``, ``Hostname``               responses 500+
``ts_inference_requests_total``     ``model_name``, ``model_version``,           successful inferences
                                    ``hostname``
``ts_inference_latency_microseconds`` same                                       their total time, µs
``ts_queue_latency_microseconds``   same                                         their queue time, µs
=================================== ============================================ =====================

``model_version`` is the version the client named, ``default`` when it named none (as TorchServe
labels it). The values only grow, as TorchServe's counters do. ``ts_inference_requests_total`` is a
Prometheus counter; the other five are exported untyped: prometheus-client's text format renames
every counter to ``<name>_total``, which would break the names these dashboards query.

On the metrics listener their sample lines are written as TorchServe writes them
(:func:`as_torchserve_writes`): labels in TorchServe's order, each followed by a comma
(``Requests2XX{Level="Host",Hostname="h",} 3.0``) -- what TorchServe's own Postman collection
matches. Both forms are valid Prometheus text; only the line's spelling differs.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

STATUS_CLASSES = ("2XX", "4XX", "5XX")
DEFAULT_VERSION = "default"
"""``model_version`` of a request that named no version (TorchServe's label)."""
HOST_LABELS = ("Level", "Hostname")
INFERENCE_LABELS = ("model_name", "model_version", "hostname")
LABEL_ORDER: dict[str, tuple[str, ...]] = {
    **{f"Requests{cls}": HOST_LABELS for cls in STATUS_CLASSES},
    "ts_inference_requests_total": INFERENCE_LABELS,
    "ts_inference_latency_microseconds": INFERENCE_LABELS,
    "ts_queue_latency_microseconds": INFERENCE_LABELS,
}
"""Sample name -> its labels in TorchServe's order (the dimensions of its ``metrics.yaml``)."""
_SAMPLE_STARTS = tuple(f"{name}{{" for name in LABEL_ORDER)
_SAMPLE = re.compile(r"(?P<name>[^{]+)\{(?P<labels>.*)\}(?P<value> [^}]*)")
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def status_class(status: int) -> str | None:
    """The ``RequestsNXX`` family of an HTTP status, as TorchServe buckets them (1xx: none)."""
    if status >= 500:
        return "5XX"
    if status >= 400:
        return "4XX"
    return "2XX" if status >= 200 else None


def as_torchserve_writes(exposition: bytes) -> bytes:
    """``exposition`` (Prometheus text) with the sample lines of the six TorchServe series rewritten as
    TorchServe writes them: labels in TorchServe's order, each followed by a comma (prometheus-client
    sorts them and writes none). Every other line is left as it is."""
    lines = exposition.decode().split("\n")
    for i, line in enumerate(lines):
        match = _SAMPLE.fullmatch(line) if line.startswith(_SAMPLE_STARTS) else None
        if match is None:
            continue
        labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"])}
        order = LABEL_ORDER[match["name"]]
        if sorted(labels) != sorted(order):
            continue  # not a label set of ours: leave it
        written = "".join(f'{key}="{labels[key]}",' for key in order)
        lines[i] = f"{match['name']}{{{written}}}{match['value']}"
    return "\n".join(lines).encode()


class TorchServeMetrics(Collector):
    """The six TorchServe frontend series (module doc), registered on the app's registry."""

    def __init__(self, registry: CollectorRegistry, hostname: str | None = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self._lock = threading.Lock()
        self._status = dict.fromkeys(STATUS_CLASSES, 0)
        self._inference: dict[tuple[str, str], list[float]] = {}
        """(model, version) -> [requests, latency µs, queue µs]."""
        registry.register(self)

    def count_response(self, status: int) -> None:
        """One HTTP response of the gateway, by its status."""
        cls = status_class(status)
        if cls is not None:
            with self._lock:
                self._status[cls] += 1

    def count_inference(self, model: str, version: str | None, latency_s: float, queue_s: float) -> None:
        """One successful inference of ``model`` (``version`` as the client named it, or None)."""
        key = (model, version or DEFAULT_VERSION)
        with self._lock:
            row = self._inference.get(key)
            if row is None:
                row = self._inference[key] = [0.0, 0.0, 0.0]
            row[0] += 1
            row[1] += latency_s * 1e6
            row[2] += queue_s * 1e6

    def describe(self) -> Iterator[Metric]:
        """The families without samples (lets the registry check names without collecting)."""
        return self._families(include_samples=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(include_samples=True)

    def _families(self, include_samples: bool) -> Iterator[Metric]:
        with self._lock:
            status = dict(self._status) if include_samples else {}
            inference = {k: list(v) for k, v in self._inference.items()} if include_samples else {}
        for cls in STATUS_CLASSES:
            family = UnknownMetricFamily(
                f"Requests{cls}", f"TorchServe-compatible: HTTP responses with a {cls} status (unit: Count).",
                labels=HOST_LABELS,
            )
            if cls in status:
                family.add_metric(["Host", self.hostname], status[cls])
            yield family
        requests = CounterMetricFamily(
            "ts_inference_requests", "TorchServe-compatible: successful inference requests (unit: Count).",
            labels=INFERENCE_LABELS,
        )
        latency = UnknownMetricFamily(
            "ts_inference_latency_microseconds",
            "TorchServe-compatible: total time of successful inference requests (unit: Microseconds).",
            labels=INFERENCE_LABELS,
        )
        queue = UnknownMetricFamily(
            "ts_queue_latency_microseconds",
            "TorchServe-compatible: time successful inference requests waited to be batched "
            "(unit: Microseconds).",
            labels=INFERENCE_LABELS,
        )
        for (model, version), (count, latency_us, queue_us) in sorted(inference.items()):
            labels = [model, version, self.hostname]
            requests.add_metric(labels, count)
            latency.add_metric(labels, latency_us)
            queue.add_metric(labels, queue_us)
        yield requests
        yield latency
        yield queue
