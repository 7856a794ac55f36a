"""What both public APIs share: reading a request's common fields, and the model's outputs
as answers (class labels, softmax probabilities, top k)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import numpy as np
from fastapi import Request, Response
from fastapi.routing import APIRoute

from triserve_common.errors import ClientClosedRequestError
from triserve_gateway.deadline import Deadline, request_budget_s
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import InferenceCall, InferenceService, RequestTrack, Served

Array = np.ndarray[Any, Any]
JSON = "application/json"

# ------------------------------------------------------------------ routes


class DirectRoute(APIRoute):
    """A route whose endpoint gets the ``Request`` as is and returns the ``Response``.

    FastAPI's documented custom-route hook (``get_route_handler``) without dependency solving or
    parameter/body validation: for the hot inference endpoints, which parse the request themselves.
    Middleware, exception handlers and the OpenAPI entry stay as for any route. Measured (py-spy, 32
    clients, PNG): FastAPI's per-route handling was ~20 % of the gateway's samples.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)


# ------------------------------------------------------------------ request fields


def service_of(request: Request) -> InferenceService:
    """The app's inference service (set by :func:`triserve_gateway.app.create_app`)."""
    return cast(InferenceService, request.app.state.service)


def request_id_of(request: Request) -> str | None:
    """The request id the request-id middleware assigned."""
    return cast(str | None, getattr(request.state, "request_id", None))


def forced_backend(request: Request) -> str | None:
    """Backend named by ``X-Backend`` or ``?backend=`` (lower-cased), if any."""
    value = request.headers.get("x-backend") or request.query_params.get("backend")
    return value.strip().lower() if value else None


WATCH_AFTER_S = 0.1
"""A request still running this long after it reached the core starts watching for its client's
disconnect (:func:`infer_request`)."""


async def infer_request(request: Request, track: RequestTrack, call: InferenceCall) -> Served:
    """Run ``call`` under the request's deadline (``request_timeout_ms``, or less when the client
    sends ``X-Request-Timeout`` in ms; counted from the request's arrival).

    A client that disconnects meanwhile cancels the call (noticed from :data:`WATCH_AFTER_S` on): a
    request still queued (admission or batching) leaves its queue; work already sent to a backend
    completes and is dropped."""
    service = service_of(request)
    budget = request_budget_s(request.headers.get("x-request-timeout"), service.settings.request_timeout_ms)
    deadline = Deadline(budget - (time.perf_counter() - track.start))
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        # the body was read: the server's next message is the disconnect (anything else: stop watching)
        if (await request.receive())["type"] == "http.disconnect":
            gone = True
            task.cancel()

    watcher: asyncio.Future[None] | None = None

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    # most requests are answered before a watcher would be worth its task: watch only those that wait
    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        return await service.infer(track, call, deadline)
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientClosedRequestError("client closed the connection before the answer") from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


# ------------------------------------------------------------------ outputs


def class_count(mv: ModelVersion) -> int:
    """Number of classes: the manifest's labels, else the output's last dimension."""
    return len(mv.labels) or mv.output.shape[-1]


def class_labels(mv: ModelVersion, classes: int) -> list[str]:
    """The manifest's labels, or the class indices as strings when it has none."""
    return mv.labels or [str(i) for i in range(classes)]


def softmax(logits: Array) -> Array:
    """Row-wise softmax in float64, stable for large logits."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs


def predicted_labels(mv: ModelVersion, logits: Array) -> list[str]:
    """Per row: the label of the most probable class."""
    labels = class_labels(mv, logits.shape[1])
    return [labels[int(i)] for i in logits.argmax(axis=1)]


def topk_of(mv: ModelVersion, logits: Array, k: int) -> list[dict[str, float]]:
    """Per row: the k most probable labels → softmax probability, most probable first."""
    probs = softmax(logits)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    labels = class_labels(mv, logits.shape[1])
    return [{labels[i]: float(p[i]) for i in row} for p, row in zip(probs, order, strict=True)]
