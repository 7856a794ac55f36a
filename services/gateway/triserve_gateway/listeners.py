"""The gateway's three listeners, TorchServe's layout.

====================  =====================  ==========================================
listener              default                serves
====================  =====================  ==========================================
inference             127.0.0.1:8080         ``/predictions``, ``/ping``, ``/v2/...``
management            127.0.0.1:8081         TorchServe's management API, v2 repository
metrics               127.0.0.1:8082         ``GET /metrics`` (Prometheus, open)
====================  =====================  ==========================================

One uvicorn server listens on the three sockets; :class:`PortRouter` hands each connection to the
app of the listener it arrived on (the connection's local port), and runs the lifespan (backend
clients, health checks, reconciliation) once, through the inference app. With several gateway
processes (:mod:`triserve_gateway.workers`) every process listens on the inference port
(:func:`bind_shared`) and only the first also on the management and metrics ports.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from triserve_common.errors import install_error_handlers
from triserve_common.limits import ServerLimits, uvicorn_options
from triserve_common.metrics import add_metrics_route
from triserve_common.settings import ServiceSettings
from triserve_gateway.torchserve_metrics import as_torchserve_writes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    """One listening address and the app it serves."""

    name: str
    host: str
    port: int
    app: ASGIApp


class PortRouter:
    """ASGI app dispatching each connection by its local port; lifespan events go to ``lifespan_app``."""

    def __init__(self, listeners: list[Listener], lifespan_app: ASGIApp) -> None:
        self.by_port = {listener.port: listener.app for listener in listeners}
        self.lifespan_app = lifespan_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan_app(scope, receive, send)
            return
        server = scope.get("server")
        app = self.by_port.get(server[1]) if server else None
        if app is None:  # cannot happen with sockets bound by serve_listeners; refuse rather than guess
            raise RuntimeError(f"connection on an unknown listener {server}")
        await app(scope, receive, send)


def create_metrics_app(registry: CollectorRegistry) -> FastAPI:
    """The metrics listener's app: ``GET /metrics`` only (TorchServe's series as TorchServe writes them)."""
    app = FastAPI(title="triserve gateway metrics", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    add_metrics_route(app, registry, rewrite=as_torchserve_writes)
    return app


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket as uvicorn binds its own (IPv4/IPv6, SO_REUSEADDR)."""
    config = uvicorn.Config(  # only to bind: leaves the logging the server's config set up alone
        app="unused:app", host=host, port=port, backlog=backlog, log_config=None, access_log=False,
        log_level=None,
    )
    return config.bind_socket()


def bind_shared(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket with ``SO_REUSEPORT``: every gateway process binds its own on the inference
    port and the kernel spreads incoming connections over them (by a hash of the connection's
    addresses); a process that exits takes only its own socket (and its queued connections) away."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_listeners(
    listeners: list[Listener], lifespan_app: ASGIApp, settings: ServiceSettings,
    limits: ServerLimits | None = None, sockets: dict[str, socket.socket] | None = None,
) -> None:
    """Serve every listener from one uvicorn server (same options as :func:`triserve_common.server.serve`);
    ``limits`` (connection limit, header read and keep-alive timeouts) apply to every listener;
    ``sockets`` holds already bound sockets by listener name (the others are bound here)."""
    options: dict[str, Any] = {"http": "httptools", "timeout_keep_alive": 75}
    if limits is not None:
        options.update(uvicorn_options(limits))
    config = uvicorn.Config(
        PortRouter(listeners, lifespan_app),
        loop="uvloop",
        access_log=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        backlog=4096,
        **options,
    )
    bound = sockets or {}
    socks = [bound.get(x.name) or bind(x.host, x.port, config.backlog) for x in listeners]
    for listener in listeners:
        log.info("%s API on http://%s:%d", listener.name, listener.host, listener.port)
    uvicorn.Server(config).run(sockets=socks)
