"""The gateway's apps: ``create_app(settings)``.

Built once per process (no module-level singletons): the effective routing (YAML + env), the
model manager (registered versions from the model store, ``load_models``), a per-app Prometheus
registry, the :class:`~triserve_gateway.gateway.Gateway`, the inference APIs (TorchServe + KServe
v2), and the apps of the management and metrics listeners (:mod:`triserve_gateway.listeners`),
each behind its API key (:mod:`triserve_gateway.auth`). The lifespan opens the pooled backend
clients, the health-check and reconciliation tasks, and closes them on shutdown.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import Scope

from triserve_common.errors import error_body, install_error_handlers
from triserve_common.limits import BodyTimeoutMiddleware
from triserve_common.metrics import new_registry
from triserve_common.server import RequestIdMiddleware
from triserve_common.settings import ServiceSettings
from triserve_gateway import __version__, api_explain, api_torchserve, api_v2, auth, demo
from triserve_gateway.admin import BackendAdmin, default_admins
from triserve_gateway.api_management import create_management_app, render_unauthorized
from triserve_gateway.auth import KeyMiddleware
from triserve_gateway.backends import BackendClient, make_backend_client
from triserve_gateway.config import BackendConfig, RoutingConfig, gateway_routing
from triserve_gateway.error_shapes import render_error, unexpected_error
from triserve_gateway.gateway import Gateway
from triserve_gateway.grpc_server import GrpcListener
from triserve_gateway.listeners import Listener, create_metrics_app, serve_listeners
from triserve_gateway.manager import ModelManager
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.models import ModelCatalog
from triserve_gateway.openapi_spec import unique_operation_ids
from triserve_gateway.process import ProcessRole, metrics_registry
from triserve_gateway.response_hooks import ResponseHooks
from triserve_gateway.service import InferenceService
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.shadow import ShadowTraffic
from triserve_gateway.shedding import LoadSheddingMiddleware
from triserve_gateway.store import ModelStore

log = logging.getLogger(__name__)

ClientFactory = Callable[[RoutingConfig], Mapping[str, BackendClient]]
AdminFactory = Callable[[Mapping[str, BackendConfig]], Mapping[str, BackendAdmin]]


def default_clients(routing: RoutingConfig) -> dict[str, BackendClient]:
    """One pooled client per configured backend, by protocol."""
    return {name: make_backend_client(name, cfg) for name, cfg in routing.backends.items()}


def create_app(
    settings: GatewaySettings | None = None,
    *,
    routing: RoutingConfig | None = None,
    clients: ClientFactory = default_clients,
    admins: AdminFactory = default_admins,
    health_checks: bool = True,
    role: ProcessRole | None = None,
) -> FastAPI:
    """The gateway's inference app, with the management and metrics apps of the other two listeners
    in ``app.state`` (:func:`listeners`). ``routing``/``clients``/``admins`` default to the settings'
    routing file and real HTTP clients; tests inject fakes. Raises :class:`TriserveError` on bad config.

    The lifespan (run by the inference app) opens the backend clients, checks health and reconciles
    the registered models with what each backend holds, every health interval. ``role``: which of
    several gateway processes this is (:mod:`triserve_gateway.workers`; default: the only one).
    """
    settings = settings or GatewaySettings()
    role = role or ProcessRole()
    # httpx logs every backend request at INFO: far too chatty (and slow) for a hot path.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    routing = routing or gateway_routing(settings)
    registry = new_registry()
    metrics = GatewayMetrics(registry, worker=role.index)
    # The gateway is built now (clients are lazy: no connection is opened before the lifespan).
    gateway = Gateway(
        routing, ModelCatalog([]), clients(routing), metrics, limits=settings.limits(), processes=role.count
    )
    manager = ModelManager(
        gateway, ModelStore(settings.model_store), admins(routing.backends), settings.max_image_pixels,
        drain_timeout_s=settings.graceful_shutdown_s, image_formats=settings.image_formats, role=role,
    )
    manager.register_startup(settings.load_models)
    shadows = ShadowTraffic(gateway, metrics.shadow)
    service = InferenceService(gateway, metrics, settings, shadows)
    inference_key = auth.inference_key(
        _secret(settings.inference_key), settings.inference_key_file, settings.disable_token_auth
    )
    grpc = GrpcListener(service, inference_key, settings)  # serves once a gateway process says so
    app = FastAPI(
        title="triserve gateway",
        version=__version__,
        description="TorchServe-compatible and KServe v2 (OIP) inference in front of TorchServe, "
        "ONNX Runtime and Paddle backends: preprocessing, routing, failover, dynamic batching.",
        lifespan=_lifespan(gateway, manager, shadows, health_checks, grpc),
    )
    app.state.settings = settings
    app.state.gateway = gateway
    app.state.manager = manager
    app.state.service = service
    app.state.grpc = grpc
    app.state.registry = registry
    management_key = auth.management_key(
        _secret(settings.management_key), settings.management_key_file, settings.disable_token_auth
    )
    _install_middleware(app, settings, gateway, metrics, shadows, inference_key)
    api_torchserve.register(app)
    api_v2.register(app)
    api_explain.register(app)  # /explanations, /v2/.../explain
    demo.register(app)  # the web demo: GET / → /demo/
    unique_operation_ids(app)
    app.state.management_app = create_management_app(manager, management_key)
    app.state.metrics_app = create_metrics_app(metrics_registry(registry, role))
    return app


def _lifespan(
    gateway: Gateway, manager: ModelManager, shadows: ShadowTraffic, health_checks: bool, grpc: GrpcListener
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The inference app's lifespan: health checks and the model manager up, then the gRPC listener
    (when this process serves it); everything closed after, gRPC first."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start(health_checks=health_checks)
        if health_checks:
            health = gateway.routing.health
            first = max(1.0, 2 * health.timeout_s)  # the backends' first reports, before serving
            await manager.start(health.interval_s, first_timeout_s=first)
        # What startup loaded (app, models, sessions: ~90k objects) stays: keep it out of the cyclic
        # collector, whose full passes over it stalled the event loop under load (issue 12, 32 clients on
        # the shared box: 9 passes of 130-160 ms in 17 s; frozen: 1-6 ms). Frozen objects dropped later
        # (an unregistered model's) are still freed by reference counting.
        gc.freeze()
        log.info(
            "gateway up: models %s; backends %s",
            ", ".join(gateway.routed()) or "none",
            ", ".join(f"{n}={b.client.url} ({b.health_label()})" for n, b in gateway.backends.items()),
        )
        try:
            await grpc.start()  # a gRPC port in use ends the start here, everything closed below
            yield
        finally:
            await grpc.stop()
            await shadows.close()
            await manager.close()
            await gateway.close()

    return lifespan


def _install_middleware(
    app: FastAPI, settings: GatewaySettings, gateway: Gateway, metrics: GatewayMetrics,
    shadows: ShadowTraffic, inference_key: auth.ApiKey,
) -> None:
    """Error handlers and the inference app's middleware, innermost first: body read timeout, load
    shedding (503 before parsing when a model is full), inference key, request id, response hooks."""
    install_error_handlers(app, render_error)  # TorchServe's error shape off /v2, OIP's under it
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(LoadSheddingMiddleware, gateway=gateway)
    app.add_middleware(KeyMiddleware, key=inference_key, render=_render_unauthorized)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(ResponseHooks, metrics=metrics.torchserve, shadows=shadows)  # outermost


def listeners(app: FastAPI) -> list[Listener]:
    """The three listeners of a gateway app built by :func:`create_app`."""
    settings: GatewaySettings = app.state.settings
    return [
        Listener("inference", settings.host, settings.port, app),
        Listener("management", settings.management_host, settings.management_port, app.state.management_app),
        Listener("metrics", settings.metrics_host, settings.metrics_port, app.state.metrics_app),
    ]


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve the gateway's three listeners (the ``serve`` of :func:`~triserve_common.server.run_service`),
    with the connection limit and read timeouts of :meth:`GatewaySettings.server_limits`."""
    gateway_settings: GatewaySettings = app.state.settings
    serve_listeners(listeners(app), app, settings, gateway_settings.server_limits())


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


_TORCHSERVE_PATHS = ("/predictions", "/explanations", "/ping")


async def _render_unauthorized(scope: Scope, exc: auth.UnauthorizedError) -> tuple[int, bytes, str]:
    """401 on the inference port: TorchServe's shape on its routes, OIP's ``{"error"}`` on ``/v2``."""
    if str(scope.get("path", "")).startswith(_TORCHSERVE_PATHS):
        return await render_unauthorized({**scope, "path": "/"}, exc)
    body = json.dumps(error_body(exc.message)).encode()
    return exc.status_code, body, "application/json"
