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

The values live in prometheus-client gauges (``multiprocess_mode="sum"``, on no registry of their
own) so that with several gateway processes each process's counts land in the multiprocess directory
and the metrics listener sums them; :func:`torchserve_family` gives each family its TorchServe type
back, in one process (:meth:`TorchServeMetrics.collect`) and across processes alike. The
``triserve_gateway_worker_responses`` counter counts the same responses by gateway process.

On the metrics listener their sample lines are written as TorchServe writes them
(:func:`as_torchserve_writes`): labels in TorchServe's order, each followed by a comma
(``Requests2XX{Level="Host",Hostname="h",} 3.0``) -- what TorchServe's own Postman collection
matches. Both forms are valid Prometheus text; only the line's spelling differs.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

STATUS_CLASSES = ("2XX", "4XX", "5XX")
DEFAULT_VERSION = "default"
"""``model_version`` of a request that named no version (TorchServe's label)."""
HOST_LABELS = ("Level", "Hostname")
INFERENCE_LABELS = ("model_name", "model_version", "hostname")
REQUESTS_SAMPLE = "ts_inference_requests_total"
"""The gauge holding ``ts_inference_requests`` (exported as a counter of that name)."""
UNTYPED = frozenset({
    *(f"Requests{cls}" for cls in STATUS_CLASSES),
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
})  # fmt: skip

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


def torchserve_family(metric: Metric) -> Metric:
    """A collected family as TorchServe exports it: untyped ``RequestsNXX`` and latencies, the
    ``ts_inference_requests`` counter; any other family unchanged."""
    if metric.name in UNTYPED:
        family = Metric(metric.name, metric.documentation, "unknown")
    elif metric.name == REQUESTS_SAMPLE:
        family = Metric("ts_inference_requests", metric.documentation, "counter")
    else:
        return metric
    family.samples = list(metric.samples)
    return family


def _gauge(name: str, documentation: str, labels: tuple[str, ...]) -> Gauge:
    return Gauge(name, documentation, labels, registry=None, multiprocess_mode="sum")


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

    def __init__(self, registry: CollectorRegistry, hostname: str | None = None, worker: int = 0) -> None:
        self.hostname = hostname or socket.gethostname()
        status = [
            _gauge(f"Requests{cls}",
                   f"TorchServe-compatible: HTTP responses with a {cls} status (unit: Count).",
                   HOST_LABELS)
            for cls in STATUS_CLASSES
        ]  # fmt: skip
        self._status = {
            cls: g.labels("Host", self.hostname) for cls, g in zip(STATUS_CLASSES, status, strict=True)
        }
        self._requests = _gauge(
            REQUESTS_SAMPLE, "TorchServe-compatible: successful inference requests (unit: Count).",
            INFERENCE_LABELS,
        )
        self._latency = _gauge(
            "ts_inference_latency_microseconds",
            "TorchServe-compatible: total time of successful inference requests (unit: Microseconds).",
            INFERENCE_LABELS,
        )
        self._queue = _gauge(
            "ts_queue_latency_microseconds",
            "TorchServe-compatible: time successful inference requests waited to be batched "
            "(unit: Microseconds).",
            INFERENCE_LABELS,
        )
        self._gauges = [*status, self._requests, self._latency, self._queue]
        self._inference: dict[tuple[str, str], tuple[Gauge, Gauge, Gauge]] = {}
        self._worker = Counter(
            "triserve_gateway_worker_responses",
            "HTTP responses of the gateway by gateway process (worker index; 0 = the primary).",
            ["worker"], registry=registry,
        ).labels(str(worker))  # fmt: skip
        registry.register(self)

    def count_response(self, status: int) -> None:
        """One HTTP response of the gateway, by its status."""
        cls = status_class(status)
        if cls is not None:
            self._status[cls].inc()
            self._worker.inc()

    def count_inference(self, model: str, version: str | None, latency_s: float, queue_s: float) -> None:
        """One successful inference of ``model`` (``version`` as the client named it, or None)."""
        key = (model, version or DEFAULT_VERSION)
        row = self._inference.get(key)
        if row is None:
            labels = (*key, self.hostname)
            row = self._inference[key] = (
                self._requests.labels(*labels), self._latency.labels(*labels), self._queue.labels(*labels)
            )
        row[0].inc()
        row[1].inc(latency_s * 1e6)
        row[2].inc(queue_s * 1e6)

    def describe(self) -> Iterator[Metric]:
        """The families without samples (lets the registry check names without collecting)."""
        for gauge in self._gauges:
            for metric in gauge.describe():
                yield torchserve_family(metric)

    def collect(self) -> Iterator[Metric]:
        for gauge in self._gauges:
            for metric in gauge.collect():
                yield torchserve_family(metric)
