"""The gateway's one inference entry point, between the HTTP layer and the core.

An API module parses a request into an :class:`InferenceCall` and calls
:meth:`InferenceService.infer`, which resolves model, version and route once
(:meth:`~triserve_gateway.gateway.Gateway.resolve`), lets the request check itself against the
resolved model version (``prepare``), waits for admission
(:meth:`~triserve_gateway.gateway.Gateway.admit`: bounded in-flight work and queue per model),
preprocesses images, runs the batch through :meth:`~triserve_gateway.gateway.Gateway.infer` within
the request's deadline and records per-stage timings. The API module renders the :class:`Served`
result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triserve_common.errors import TriserveError
from triserve_gateway.deadline import Deadline
from triserve_gateway.gateway import Gateway
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.models import ModelVersion
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.shadow import ShadowTraffic
from triserve_gateway.targets import RoutedResult
from triserve_gateway.timing import server_timing

Array = np.ndarray[Any, Any]
UNKNOWN_MODEL = "_unknown"
"""``model`` label for requests naming a model that is not routed (bounded label cardinality)."""


@dataclass(frozen=True)
class Payload:
    """The model input of one request: encoded images (preprocessed here) or a ready tensor."""

    images: Sequence[bytes] | None = None
    tensor: Array | None = None
    what: str = "image"
    """How error messages name one image (``request body``, ``form part``, ``input 'x' image``)."""


@dataclass(frozen=True)
class InferenceCall:
    """What the HTTP layer parsed from one inference request."""

    model: str
    version: str | None
    request_id: str | None
    backend: str | None
    """Backend forced by the client (``X-Backend``), if any."""
    prepare: Callable[[ModelVersion], Payload]
    """Checks the request against the resolved model version (raises 4xx) and gives its payload."""


@dataclass
class Served:
    """A successful inference: the output rows, the model version and where the time went."""

    result: RoutedResult
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

    def __init__(
        self, gateway: Gateway, metrics: GatewayMetrics, settings: GatewaySettings,
        shadows: ShadowTraffic | None = None,
    ) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.settings = settings
        self.shadows = shadows
        """Shadow traffic of the routes that configure it (None = no shadows)."""

    def model_label(self, model: str) -> str:
        """``model`` as a metrics label (:data:`UNKNOWN_MODEL` when it is not routed)."""
        return model if self.gateway.is_routed(model) else UNKNOWN_MODEL

    def track(self, model: str, start: float) -> RequestTrack:
        """Context manager accounting for one request (in-flight, count by status, total latency)."""
        return RequestTrack(self.metrics, self.model_label(model), start)

    async def infer(
        self, track: RequestTrack, request: InferenceCall, deadline: Deadline | None = None
    ) -> Served:
        """Resolve, check, admit, preprocess and infer ``request`` before ``deadline`` (default: the
        gateway's ``request_timeout_ms``); raises TriserveError (see module doc)."""
        deadline = deadline or Deadline(self.settings.request_timeout_ms / 1000.0)
        target = self.gateway.resolve(request.model, request.version)
        with self.gateway.catalog.using(target.mv):  # unregistering the version waits for this request
            payload = request.prepare(target.mv)
            async with self.gateway.admit(target.model, deadline):
                t_pre = time.perf_counter()
                x = await self.model_input(target.mv, payload)
                preprocess_s = time.perf_counter() - t_pre
                result = await self.gateway.infer(target, x, request.request_id, request.backend, deadline)
            if self.shadows is not None:
                self.shadows.offer(target, x, result, request.request_id)
        track.backend = result.backend
        served = Served(result, target.mv, preprocess_s)
        served.total_s = time.perf_counter() - track.start
        self.metrics.torchserve.count_inference(track.model, request.version, served.total_s, result.queue_s)
        stage = self.metrics.stage_latency
        stage.labels(track.model, result.backend, "preprocess").observe(preprocess_s)
        stage.labels(track.model, result.backend, "queue").observe(result.queue_s)
        stage.labels(track.model, result.backend, "backend").observe(result.backend_s)
        return served

    async def model_input(self, mv: ModelVersion, payload: Payload) -> Array:
        """The payload's tensor, or its images decoded: inline when small (28x28 PNGs take
        microseconds), in a worker thread when big. (Explanations and the demo's input view use it too.)"""
        if payload.images is None:
            assert payload.tensor is not None
            return payload.tensor
        if sum(len(i) for i in payload.images) <= self.settings.inline_decode_max_bytes:
            return mv.preprocessor.batch(payload.images, payload.what)
        return await asyncio.to_thread(mv.preprocessor.batch, payload.images, payload.what)


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
