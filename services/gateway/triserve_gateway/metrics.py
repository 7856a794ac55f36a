"""The gateway's Prometheus series, on the app's own registry (no global state)."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from triserve_common.metrics import BATCH_BUCKETS, LATENCY_BUCKETS
from triserve_gateway.torchserve_metrics import TorchServeMetrics

STAGES = ("preprocess", "queue", "backend")
UNKNOWN_LABEL = "_unknown"
"""``model`` / ``version`` label of a request naming a model or version that is not registered."""
PAIR_LABELS = ("model", "primary", "primary_version", "candidate", "candidate_version")
"""A shadow's primary/candidate pair: the backend and version that answered, the one mirrored to."""
SHADOW_OUTCOMES = ("compared", "failed", "dropped")
LOGIT_DIFF_BUCKETS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Max |logit diff| of one shadow: float rounding (1e-6) to a different model (> 1)."""

M = TypeVar("M", Counter, Gauge, Histogram)


class LabelCache(Generic[M]):
    """A labelled metric whose children are looked up in a dict (``labels()`` is slow-ish)."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class ShadowMetrics:
    """Shadow traffic: outcomes, top-1 agreement and max |logit diff| per primary/candidate pair."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.shadows = LabelCache(Counter(
            "triserve_gateway_shadows",
            "Mirrored requests by outcome: compared, failed (candidate error or timeout), dropped (load).",
            [*PAIR_LABELS, "outcome"], registry=r,
        ))  # fmt: skip
        self.compared_rows = LabelCache(Counter(
            "triserve_gateway_shadow_compared_rows",
            "Rows (images) whose primary and candidate outputs were compared.",
            PAIR_LABELS, registry=r,
        ))  # fmt: skip
        self.agreed_rows = LabelCache(Counter(
            "triserve_gateway_shadow_agreed_rows",
            "Compared rows where primary and candidate agree on the top-1 class.",
            PAIR_LABELS, registry=r,
        ))  # fmt: skip
        self.logit_diff = LabelCache(Histogram(
            "triserve_gateway_shadow_logit_diff",
            "Max |logit diff| between primary and candidate, per compared request.",
            PAIR_LABELS, buckets=LOGIT_DIFF_BUCKETS, registry=r,
        ))  # fmt: skip
        self.max_logit_diff = LabelCache(Gauge(
            "triserve_gateway_shadow_max_logit_diff",
            "Largest |logit diff| between primary and candidate seen since the gateway started.",
            PAIR_LABELS, registry=r, multiprocess_mode="max",
        ))  # fmt: skip
        self.pending = LabelCache(Gauge(
            "triserve_gateway_shadows_pending",
            "Shadows running or waiting for a slot, per candidate (at most max_concurrent + max_queue).",
            ["model", "candidate", "candidate_version"], registry=r, multiprocess_mode="livesum",
        ))  # fmt: skip


class GatewayMetrics:
    """Requests, latencies (total and per stage), in-flight, batches, backend health, failovers;
    shadow traffic (:class:`ShadowMetrics`) and TorchServe's frontend names (:class:`TorchServeMetrics`);
    the overload protections: admission (in flight, queued, rejections), deadlines, retries and
    their budget, ejections, cancellations.

    Every per-request series is labelled by ``model`` and ``version``: a registered model and one of
    its versions, else :data:`UNKNOWN_LABEL` (a client cannot grow the label set); per-backend series
    (health, failures) by ``backend``; the overload series by ``model`` only (admission, budgets and
    deadlines are per model).

    With several gateway processes (:mod:`triserve_gateway.process`) the counters and histograms sum
    over the processes; the gauges say how: in flight and pending shadows sum over the live processes,
    ``backend_up`` is the lowest (0 when any process has the backend down or ejected), the shadows'
    max logit diff and the attempt timeout the highest; admission in flight and queued sum over the
    live processes (each process admits on its own)."""

    def __init__(self, registry: CollectorRegistry, worker: int = 0) -> None:
        self.registry = registry
        self._declare_request_series(registry)
        self.shadow = ShadowMetrics(registry)
        self.torchserve = TorchServeMetrics(registry, worker=worker)
        self._declare_overload_series(registry)

    def _declare_request_series(self, r: CollectorRegistry) -> None:
        """Requests, latencies, in flight, batches, backend health and failovers."""
        self.requests = LabelCache(Counter(
            "triserve_gateway_requests",
            "Inference requests by model, version, backend that answered (none if no backend did) and "
            "HTTP status.",
            ["model", "version", "backend", "status"], registry=r,
        ))  # fmt: skip
        self.latency = LabelCache(Histogram(
            "triserve_gateway_request_duration_seconds",
            "Total time of an inference request in the gateway (body read to response built).",
            ["model", "version", "backend"], buckets=LATENCY_BUCKETS, registry=r,
        ))  # fmt: skip
        self.stage_latency = LabelCache(Histogram(
            "triserve_gateway_stage_duration_seconds",
            "Time of each stage of an inference request: preprocess, queue (batching), backend.",
            ["model", "version", "backend", "stage"], buckets=LATENCY_BUCKETS, registry=r,
        ))  # fmt: skip
        self.in_flight = LabelCache(Gauge(
            "triserve_gateway_requests_in_flight",
            "Inference requests being processed by the gateway.",
            ["model", "version"], registry=r, multiprocess_mode="livesum",
        ))  # fmt: skip
        self.batch_size = LabelCache(Histogram(
            "triserve_gateway_batch_size",
            "Rows (images) per backend call.",
            ["model", "version", "backend"], buckets=BATCH_BUCKETS, registry=r,
        ))  # fmt: skip
        self.backend_up = LabelCache(Gauge(
            "triserve_gateway_backend_up",
            "1 when the backend passes its active health check and its circuit is not open.",
            ["backend"], registry=r, multiprocess_mode="livemin",
        ))  # fmt: skip
        self.backend_failures = LabelCache(Counter(
            "triserve_gateway_backend_failures",
            "Failed backend calls by reason (unavailable, timeout, error, rejected).",
            ["backend", "reason"], registry=r,
        ))  # fmt: skip
        self.grpc_requests = LabelCache(Counter(
            "triserve_gateway_grpc_requests",
            "Calls of the gRPC inference API (KServe v2) by method and gRPC status code (inferences "
            "are also counted in triserve_gateway_requests, by their HTTP-equivalent status).",
            ["method", "code"], registry=r,
        ))  # fmt: skip
        self.failovers = LabelCache(Counter(
            "triserve_gateway_failovers",
            "Requests retried on another backend after a failure of this one.",
            ["model", "version", "backend"], registry=r,
        ))  # fmt: skip

    def _declare_overload_series(self, r: CollectorRegistry) -> None:
        """Admission, rejections, deadlines, retries and their budget, ejections, cancellations."""
        self.admitted = LabelCache(Gauge(
            "triserve_gateway_admission_in_flight",
            "Requests of the model admitted into the core (preprocessing, batching, backend calls).",
            ["model"], registry=r, multiprocess_mode="livesum",
        ))  # fmt: skip
        self.queued = LabelCache(Gauge(
            "triserve_gateway_admission_queue_depth",
            "Requests of the model waiting for admission (bounded by max_queue).",
            ["model"], registry=r, multiprocess_mode="livesum",
        ))  # fmt: skip
        self.rejections = LabelCache(Counter(
            "triserve_gateway_rejections",
            "Requests refused by admission control, by reason (queue_full: 503 at once; "
            "deadline: 504 while queued).",
            ["model", "reason"], registry=r,
        ))  # fmt: skip
        self.deadline_expired = LabelCache(Counter(
            "triserve_gateway_deadline_expired",
            "Requests whose end-to-end deadline passed (504), by where they were (admission, backend).",
            ["model", "stage"], registry=r,
        ))  # fmt: skip
        self.retries = LabelCache(Counter(
            "triserve_gateway_retries",
            "Retries on another backend (each withdrew one token from the retry budget).",
            ["model"], registry=r,
        ))  # fmt: skip
        self.retry_budget_exhausted = LabelCache(Counter(
            "triserve_gateway_retry_budget_exhausted",
            "Retries refused because the retry budget was spent (the request kept its error).",
            ["model"], registry=r,
        ))  # fmt: skip
        self.ejections = LabelCache(Counter(
            "triserve_gateway_ejections",
            "Backends taken out of rotation, by cause (timeout, unavailable, error: consecutive "
            "failures of calls; health_check: the active probe failed).",
            ["backend", "cause"], registry=r,
        ))  # fmt: skip
        self.attempt_timeout = LabelCache(Gauge(
            "triserve_gateway_attempt_timeout_seconds",
            "Current per-attempt timeout of the backend (from its observed latency).",
            ["backend"], registry=r, multiprocess_mode="livemax",
        ))  # fmt: skip
        self.backend_calls = LabelCache(Counter(
            "triserve_gateway_backend_calls",
            "Successful backend calls (one per batch), whether or not a hedge had answered first.",
            ["backend"], registry=r,
        ))  # fmt: skip
        self.cancelled = LabelCache(Counter(
            "triserve_gateway_cancelled",
            "Requests whose client went away, by where they were: admission or batch queue "
            "(removed), sent (the backend's answer is dropped).",
            ["model", "stage"], registry=r,
        ))  # fmt: skip
