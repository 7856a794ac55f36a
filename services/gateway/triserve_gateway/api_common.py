"""What both HTTP APIs share: the direct route class, reading a request's common fields, and
running it under its deadline while watching for the client's disconnect. (The answers'
class labels, probabilities and top k: :mod:`triserve_gateway.answers`.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from fastapi import Request, Response
from fastapi.routing import APIRoute

from triserve_common.errors import ClientClosedRequestError
from triserve_gateway.deadline import Deadline, request_budget_s
from triserve_gateway.service import InferenceCall, InferenceService, RequestTrack, Served

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
