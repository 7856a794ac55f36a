"""The gateway's FastAPI app: ``create_app(settings)``.

Built once per process (no module-level singletons): the effective routing (YAML + env), the
model catalog (manifests from the model store), a per-app Prometheus registry, the
:class:`~triserve_gateway.gateway.Gateway` and both public APIs. The lifespan opens the pooled
backend clients and the health-check task, and closes them on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from triserve_common.errors import error_body, install_error_handlers
from triserve_common.limits import BodyTimeoutMiddleware
from triserve_common.metrics import add_metrics_route, new_registry
from triserve_common.server import RequestIdMiddleware
from triserve_gateway import __version__, api_explain, api_torchserve, api_v2, demo
from triserve_gateway.backends import BackendClient, make_backend_client
from triserve_gateway.config import RoutingConfig, gateway_routing
from triserve_gateway.gateway import Gateway
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.models import ModelCatalog
from triserve_gateway.service import InferenceService
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.shedding import LoadSheddingMiddleware

log = logging.getLogger(__name__)

ClientFactory = Callable[[RoutingConfig], Mapping[str, BackendClient]]


def default_clients(routing: RoutingConfig) -> dict[str, BackendClient]:
    """One pooled client per configured backend, by protocol."""
    return {name: make_backend_client(name, cfg) for name, cfg in routing.backends.items()}


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as a plain 500."""
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal server error"), status_code=500)


def create_app(
    settings: GatewaySettings | None = None,
    *,
    routing: RoutingConfig | None = None,
    catalog: ModelCatalog | None = None,
    clients: ClientFactory = default_clients,
    health_checks: bool = True,
) -> FastAPI:
    """The gateway app. ``routing``/``catalog``/``clients`` default to the settings' files and
    real HTTP clients; tests inject fakes. Raises :class:`TriserveError` on bad config."""
    settings = settings or GatewaySettings()
    # httpx logs every backend request at INFO: far too chatty (and slow) for a hot path.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    routing = routing or gateway_routing(settings)
    catalog = catalog or ModelCatalog.from_store(
        settings.model_store, routing.models.keys(), settings.max_image_pixels
    )
    registry = new_registry()
    metrics = GatewayMetrics(registry)
    # The gateway is built now (clients are lazy: no connection is opened before the lifespan).
    gateway = Gateway(routing, catalog, clients(routing), metrics, limits=settings.limits())
    service = InferenceService(gateway, metrics, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start(health_checks=health_checks)
        log.info(
            "gateway up: models %s; backends %s",
            ", ".join(catalog.names()),
            ", ".join(f"{n}={b.client.url} ({b.health_label()})" for n, b in gateway.backends.items()),
        )
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(
        title="triserve gateway",
        version=__version__,
        description="TorchServe-compatible and KServe v2 (OIP) inference in front of TorchServe, "
        "ONNX Runtime and Paddle backends: preprocessing, routing, failover, dynamic batching.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.gateway = gateway
    app.state.service = service
    app.state.registry = registry
    install_error_handlers(app)

    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(LoadSheddingMiddleware, gateway=gateway)
    api_torchserve.register(app)
    api_v2.register(app)
    api_explain.register(app)  # /explanations, /v2/.../explain
    demo.register(app)  # the web demo: GET / → /demo/
    add_metrics_route(app, registry)
    return app
