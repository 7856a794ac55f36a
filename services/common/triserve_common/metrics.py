"""Prometheus helpers: a registry per app (no global state) and the ``/metrics`` route."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Seconds: sub-millisecond to 10 s."""

BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Items per batch."""


def new_registry() -> CollectorRegistry:
    """A fresh registry, one per app (so several apps can live in one process, e.g. in tests)."""
    return CollectorRegistry(auto_describe=True)


def add_metrics_route(
    app: FastAPI,
    registry: CollectorRegistry,
    path: str = "/metrics",
    rewrite: Callable[[bytes], bytes] | None = None,
) -> None:
    """Expose ``registry`` in the Prometheus text format at ``path`` (passed through ``rewrite`` if given)."""

    async def metrics() -> Response:
        text = generate_latest(registry)
        return Response(rewrite(text) if rewrite else text, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(path, metrics, methods=["GET"], include_in_schema=False)
