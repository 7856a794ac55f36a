"""The OIP v2 REST surface shared by the ONNX and Paddle services.

:func:`build_app` turns settings + a loaded :class:`~triserve_common.runtime.Runtime` into a
FastAPI app::

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{name}[/versions/{v}]            metadata (parameters.engine = engine in use)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer      JSON or binary tensors
    GET  /metrics

Errors are ``{"error": ...}`` with the status of the :class:`~triserve_common.errors.TriserveError`;
bodies over ``settings.max_body_bytes`` get 413 (Content-Length checked up front and the stream
counted); ``X-Request-Id`` is echoed (or generated) on every response.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triserve_common.codec import HEADER_LENGTH
from triserve_common.dataplane import DataPlane
from triserve_common.errors import (
    BadRequestError,
    PayloadTooLargeError,
    TriserveError,
    error_body,
    install_error_handlers,
)
from triserve_common.metrics import add_metrics_route, new_registry
from triserve_common.runtime import Runtime
from triserve_common.server import configure_logging, serve
from triserve_common.settings import ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_VALID_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")


class RequestIdMiddleware:
    """Echo the client's ``X-Request-Id`` (or a generated one) on every HTTP response (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id: bytes | None = None
        for key, value in scope["headers"]:
            if key == _REQUEST_ID_KEY:
                request_id = value if _VALID_REQUEST_ID.match(value) else None
                break
        rid = request_id or uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (_REQUEST_ID_KEY, rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) a declared or streamed size over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequestError(f"invalid Content-Length '{declared}'") from None
        if size > limit:
            raise PayloadTooLargeError(f"request body of {size} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def build_app(
    settings: ServiceSettings,
    runtime: Runtime,
    *,
    server_name: str,
    server_version: str,
    title: str | None = None,
) -> FastAPI:
    """FastAPI app serving ``runtime`` (already loaded) over OIP v2 REST.

    The app owns its Prometheus registry and data plane (``app.state.dataplane``); its lifespan
    shutdown waits for running batches and unloads the runtime.
    """
    registry = new_registry()
    dataplane = DataPlane(runtime, registry, server_name, server_version)
    dataplane.start()
    limit = settings.max_body_bytes

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info(
            "serving model %s version %s on %s (engine %s)",
            runtime.name,
            runtime.version,
            runtime.platform,
            runtime.engine,
        )
        yield
        log.info("shutting down: in-flight requests finished, unloading %s", runtime.name)
        dataplane.stop()

    app = FastAPI(
        title=title or server_name,
        version=server_version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.dataplane = dataplane
    app.state.registry = registry
    install_error_handlers(app)

    async def unexpected_handler(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %r", exc)
        return JSONResponse(error_body("internal server error"), status_code=500)

    app.add_exception_handler(Exception, unexpected_handler)
    app.add_middleware(RequestIdMiddleware)

    # ------------------------------------------------------------------ health / metadata

    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": dataplane.live()})

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = dataplane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse(dataplane.server_metadata())

    def target(request: Request) -> tuple[str, str | None]:
        params = request.path_params
        return params["model_name"], params.get("model_version")

    async def model_metadata(request: Request) -> JSONResponse:
        return JSONResponse(dataplane.model_metadata(*target(request)))

    async def model_ready(request: Request) -> JSONResponse:
        name, version = target(request)
        ok = dataplane.model_ready(name, version)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        name, version = target(request)
        result = await dataplane.infer(
            name, version, lambda: read_body(request, limit), request.headers.get(HEADER_LENGTH)
        )
        return Response(content=result.body, headers=result.headers)

    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])

    add_metrics_route(app, registry)
    return app


def run_service(
    server_name: str,
    make_settings: Callable[[], S],
    make_app: Callable[[S], FastAPI],
) -> int:
    """Console-script body of a runtime service: settings, logging, app, uvicorn.

    A bad setting or a model that cannot be loaded (missing, tampered: ``ArtifactIntegrityError``)
    ends the process with one clear log line and exit status 2 or 1, not a traceback.
    """
    try:
        settings = make_settings()
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"{server_name}: invalid settings: {errors}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        app = make_app(settings)
    except TriserveError as exc:
        log.critical("%s: cannot start: %s", server_name, exc.message)
        return 1
    serve(app, settings)
    return 0
