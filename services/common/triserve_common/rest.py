"""The OIP v2 REST surface shared by the ONNX and Paddle services.

:func:`build_app` turns settings + a :class:`~triserve_common.repository.ModelRepository` (models
already loaded) into a FastAPI app::

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{name}[/versions/{v}]            metadata (parameters.engine = engine in use)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer      JSON or binary tensors
    POST /v2/repository/index                        model repository extension
    POST /v2/repository/models/{name}/load | /unload (:mod:`triserve_common.repository_api`)
    GET  /metrics

Errors are ``{"error": ...}`` with the status of the :class:`~triserve_common.errors.TriserveError`;
bodies over ``settings.max_body_bytes`` get 413 (Content-Length checked up front and the stream
counted); ``X-Request-Id`` is echoed (or generated) on every response.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from triserve_common.codec import HEADER_LENGTH
from triserve_common.dataplane import DataPlane
from triserve_common.errors import error_body, install_error_handlers
from triserve_common.metrics import add_metrics_route, new_registry
from triserve_common.repository import ModelRepository
from triserve_common.repository_api import LocalRepository, add_repository_routes
from triserve_common.runtime import Runtime
from triserve_common.server import RequestIdMiddleware, model_target, read_body
from triserve_common.settings import ServiceSettings

log = logging.getLogger(__name__)


def build_app(
    settings: ServiceSettings,
    repository: ModelRepository | Runtime,
    *,
    server_name: str,
    server_version: str,
    title: str | None = None,
) -> FastAPI:
    """FastAPI app serving the repository's loaded models (or one loaded runtime) over OIP v2 REST.

    The app owns its Prometheus registry and data plane (``app.state.dataplane``); its lifespan
    shutdown waits for running batches and unloads every model.
    """
    if isinstance(repository, Runtime):
        repository = ModelRepository.of([repository])
    registry = new_registry()
    dataplane = DataPlane(repository, registry, server_name, server_version)
    dataplane.start()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for served in dataplane.repository.loaded():
            rt = served.runtime
            log.info("serving model %s version %s on %s (engine %s)",
                     rt.name, rt.version, rt.platform, rt.engine)
        # Startup's objects (framework, engine, model) stay: keep them out of the cyclic collector, whose
        # full passes over them stalled the service under load (issue 12, ONNX at 32 clients on the shared
        # box: 17 passes of 25-230 ms in 14 s). Frozen objects dropped later are freed by refcounting.
        gc.freeze()
        yield
        log.info("shutting down: in-flight requests finished, unloading every model")
        await dataplane.stop()

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
    app.state.max_body_bytes = settings.max_body_bytes
    app.state.max_body_setting = f"{settings.model_config.get('env_prefix', '')}MAX_BODY_BYTES"
    install_error_handlers(app)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(RequestIdMiddleware)
    app.add_api_route("/v2/health/live", live, methods=["GET"])
    app.add_api_route("/v2/health/ready", ready, methods=["GET"])
    app.add_api_route("/v2", server_metadata, methods=["GET"])
    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])
    add_repository_routes(app, LocalRepository(repository))
    add_metrics_route(app, registry)
    return app


def _dataplane(request: Request) -> DataPlane:
    return cast(DataPlane, request.app.state.dataplane)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    """A bug: logged, answered as a plain 500."""
    log.error("unhandled error: %r", exc)
    return JSONResponse(error_body("internal server error"), status_code=500)


async def live(request: Request) -> JSONResponse:
    """Liveness of the service."""
    return JSONResponse({"live": _dataplane(request).live()})


async def ready(request: Request) -> JSONResponse:
    """Readiness: serving, every loaded model ready (503 otherwise)."""
    ok = _dataplane(request).ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def server_metadata(request: Request) -> JSONResponse:
    """OIP v2 server metadata."""
    return JSONResponse(_dataplane(request).server_metadata())


async def model_metadata(request: Request) -> JSONResponse:
    """OIP v2 metadata of the served model (404 for another model or version)."""
    return JSONResponse(_dataplane(request).model_metadata(*model_target(request)))


async def model_ready(request: Request) -> JSONResponse:
    """Readiness of the named model version (503 when not ready)."""
    name, version = model_target(request)
    ok = _dataplane(request).model_ready(name, version)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


async def infer(request: Request) -> Response:
    """OIP v2 inference, JSON or binary tensors (see :meth:`DataPlane.infer`)."""
    name, version = model_target(request)
    limit: int = request.app.state.max_body_bytes
    setting: str = request.app.state.max_body_setting
    result = await _dataplane(request).infer(
        name, version, lambda: read_body(request, limit, setting), request.headers.get(HEADER_LENGTH)
    )
    return Response(content=result.body, headers=result.headers)
