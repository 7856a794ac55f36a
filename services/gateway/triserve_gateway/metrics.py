"""The gateway's Prometheus series, on the app's own registry (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from triserve_common.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

STAGES = ("preprocess", "queue", "backend")


class GatewayMetrics:
    """Requests, latencies (total and per stage), in-flight, batches, backend health, failovers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "triserve_gateway_requests",
            "Inference requests by model, backend that answered (none if no backend did) and HTTP status.",
            ["model", "backend", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "triserve_gateway_request_duration_seconds",
            "Total time of an inference request in the gateway (body read to response built).",
            ["model", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_latency = Histogram(
            "triserve_gateway_stage_duration_seconds",
            "Time of each stage of an inference request: preprocess, queue (batching), backend.",
            ["model", "backend", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "triserve_gateway_requests_in_flight",
            "Inference requests being processed by the gateway.",
            ["model"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "triserve_gateway_batch_size",
            "Rows (images) per backend call.",
            ["model", "backend"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.backend_up = Gauge(
            "triserve_gateway_backend_up",
            "1 when the backend passes its active health check and its circuit is not open.",
            ["backend"],
            registry=registry,
        )
        self.backend_failures = Counter(
            "triserve_gateway_backend_failures",
            "Failed backend calls by reason (unavailable, timeout, error, rejected).",
            ["backend", "reason"],
            registry=registry,
        )
        self.failovers = Counter(
            "triserve_gateway_failovers",
            "Requests retried on another backend after a failure of this one.",
            ["model", "backend"],
            registry=registry,
        )
