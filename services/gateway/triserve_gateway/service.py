"""Glue shared by both public APIs: preprocess → gateway → metrics, with per-request timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triserve_common.errors import TriserveError
from triserve_gateway.gateway import Gateway, InferResult
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.models import ModelVersion
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.timing import server_timing

Array = np.ndarray[Any, Any]
UNKNOWN_MODEL = "_unknown"
"""``model`` label for requests naming a model that is not routed (bounded label cardinality)."""


@dataclass
class Served:
    """A successful inference: the output rows, the model version and where the time went."""

    result: InferResult
    mv: ModelVersion
    preprocess_s: float
    total_s: float = 0.0

    def headers(self) -> dict[str, str]:
        """Response headers naming backend and version, with ``Server-Timing``.

        (``X-Request-Id`` is added to every response by the request-id middleware.)
        """
        return {
            "X-Backend": self.result.backend,
            "X-Model-Version": self.result.model_version,
            "Server-Timing": server_timing(
                self.preprocess_s, self.result.queue_s, self.result.backend_s, self.total_s
            ),
        }


class InferenceService:
    """Runs one inference request end to end and accounts for it in the metrics."""

    def __init__(self, gateway: Gateway, metrics: GatewayMetrics, settings: GatewaySettings) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.inline_bytes = settings.inline_decode_max_bytes

    def model_label(self, model: str) -> str:
        return model if model in self.gateway.routing.models else UNKNOWN_MODEL

    async def preprocess(self, mv: ModelVersion, images: Sequence[bytes], what: str) -> Array:
        """Decode inline when small (28x28 PNGs take microseconds), in a thread when big."""
        if sum(len(i) for i in images) <= self.inline_bytes:
            return mv.preprocessor.batch(images, what)
        return await asyncio.to_thread(mv.preprocessor.batch, images, what)

    def track(self, model: str, start: float) -> RequestTrack:
        """Context manager accounting for one request (in-flight, count by status, total latency)."""
        return RequestTrack(self.metrics, self.model_label(model), start)

    async def run(
        self,
        track: RequestTrack,
        model: str,
        version: str | None,
        request_id: str | None,
        backend: str | None,
        images: Sequence[bytes] | None = None,
        tensor: Array | None = None,
        what: str = "image",
    ) -> Served:
        """Preprocess ``images`` (or take ``tensor`` as is) and infer; raises TriserveError."""
        self.gateway.route(model)
        mv = self.gateway.catalog.get(model, version)
        t_pre = time.perf_counter()
        if images is not None:
            x = await self.preprocess(mv, images, what)
        else:
            assert tensor is not None
            x = tensor
        preprocess_s = time.perf_counter() - t_pre
        result = await self.gateway.infer(model, version, x, request_id, backend, mv)
        track.backend = result.backend
        served = Served(result, mv, preprocess_s)
        served.total_s = time.perf_counter() - track.start
        stage = self.metrics.stage_latency
        stage.labels(track.model, result.backend, "preprocess").observe(preprocess_s)
        stage.labels(track.model, result.backend, "queue").observe(result.queue_s)
        stage.labels(track.model, result.backend, "backend").observe(result.backend_s)
        return served


class RequestTrack:
    """Accounts for one inference request: ``with service.track(model, start) as t: ...``.

    Status is 200 on normal exit, the error's status for a :class:`TriserveError`, else 500.
    """

    __slots__ = ("backend", "metrics", "model", "start")

    def __init__(self, metrics: GatewayMetrics, model: str, start: float) -> None:
        self.metrics = metrics
        self.model = model
        self.start = start
        self.backend = "none"

    def __enter__(self) -> RequestTrack:
        self.metrics.in_flight.labels(self.model).inc()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            status = "200"
        elif isinstance(exc, TriserveError):
            status = str(exc.status_code)
        else:
            status = "500"
        self.metrics.in_flight.labels(self.model).dec()
        self.metrics.requests.labels(self.model, self.backend, status).inc()
        self.metrics.latency.labels(self.model, self.backend).observe(time.perf_counter() - self.start)
