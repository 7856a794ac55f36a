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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triserve_common.errors import TriserveError, UnprocessableError
from triserve_common.tensor_checks import DecodeLimits
from triserve_gateway.budget import RequestBudget
from triserve_gateway.deadline import Deadline
from triserve_gateway.gateway import Gateway
from triserve_gateway.metrics import UNKNOWN_LABEL, GatewayMetrics
from triserve_gateway.models import ModelVersion
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.shadow import ShadowTraffic
from triserve_gateway.targets import RoutedResult
from triserve_gateway.timing import server_timing

Array = np.ndarray[Any, Any]
UNKNOWN_MODEL = UNKNOWN_LABEL
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
        self.budget = RequestBudget.from_settings(settings)

    @property
    def decode_limits(self) -> DecodeLimits:
        """OIP v2 decoding limits: JSON values for ``max_rows`` rows of the largest registered model
        input (versions come and go at run time)."""
        catalog = self.gateway.catalog
        return self.budget.json_limits(
            catalog.get(name, version).input for name in catalog.names() for version in catalog.versions(name)
        )

    def model_label(self, model: str) -> str:
        """``model`` as a metrics label (:data:`UNKNOWN_MODEL` when it is not routed)."""
        return model if self.gateway.is_routed(model) else UNKNOWN_MODEL

    def version_label(self, model: str, version: str | None) -> str:
        """``version`` as a metrics label: the version a request gets (the default when it names
        none), :data:`UNKNOWN_LABEL` when that is not a registered version of a routed model."""
        if not self.gateway.is_routed(model):
            return UNKNOWN_LABEL
        catalog = self.gateway.catalog
        resolved = catalog.default_version(model) if version in (None, "") else version
        return resolved if resolved is not None and resolved in catalog.versions(model) else UNKNOWN_LABEL

    def track(self, model: str, start: float, version: str | None = None) -> RequestTrack:
        """Context manager accounting for one request of ``model`` ``version`` (None = its default):
        in-flight, count by status, total latency."""
        return RequestTrack(self.metrics, self.model_label(model), start, self.version_label(model, version))

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
        _check_finite(result)
        served = Served(result, target.mv, preprocess_s)
        served.total_s = time.perf_counter() - track.start
        self.metrics.torchserve.count_inference(track.model, request.version, served.total_s, result.queue_s)
        stage, version = self.metrics.stage_latency, track.version
        stage.labels(track.model, version, result.backend, "preprocess").observe(preprocess_s)
        stage.labels(track.model, version, result.backend, "queue").observe(result.queue_s)
        stage.labels(track.model, version, result.backend, "backend").observe(result.backend_s)
        return served

    async def model_input(self, mv: ModelVersion, payload: Payload) -> Array:
        """The payload's tensor, or its images decoded, within the request budget
        (:mod:`triserve_gateway.budget`: rows, images, pixels; decoded off the loop when big).
        (Explanations and the demo's input view use it too.)"""
        if payload.images is None:
            assert payload.tensor is not None
            self.budget.check_rows(payload.tensor.shape[0])
            return payload.tensor
        return await self.budget.decode(mv.preprocessor, payload.images, payload.what)


def _check_finite(result: RoutedResult) -> None:
    """422 when the model's output is NaN/Inf: finite inputs far outside the model's range (say
    3e38) overflow inside it. The backend did its job (its breaker counted a success)."""
    if not np.isfinite(result.value).all():
        rows = np.flatnonzero(~np.isfinite(result.value).all(axis=1))
        raise UnprocessableError(
            f"the model's output for row(s) {rows[:10].tolist()} is not finite (NaN/Inf): "
            "the input values are far outside the range the model was trained on"
        )


class RequestTrack:
    """Accounts for one inference request: ``with service.track(model, start) as t: ...``.

    Status is 200 on normal exit, the error's status for a :class:`TriserveError`, else 500.
    """

    __slots__ = ("backend", "metrics", "model", "start", "version")

    def __init__(
        self, metrics: GatewayMetrics, model: str, start: float, version: str = UNKNOWN_LABEL
    ) -> None:
        self.metrics = metrics
        self.model = model
        self.version = version
        self.start = start
        self.backend = "none"

    def __enter__(self) -> RequestTrack:
        self.metrics.in_flight.labels(self.model, self.version).inc()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            status = "200"
        elif isinstance(exc, TriserveError):
            status = str(exc.status_code)
        else:
            status = "500"
        self.metrics.in_flight.labels(self.model, self.version).dec()
        self.metrics.requests.labels(self.model, self.version, self.backend, status).inc()
        elapsed = time.perf_counter() - self.start
        self.metrics.latency.labels(self.model, self.version, self.backend).observe(elapsed)
