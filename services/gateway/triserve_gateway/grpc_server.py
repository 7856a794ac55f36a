"""The gateway's gRPC inference listener: KServe v2 ``inference.GRPCInferenceService`` on
``grpc_port`` (7070, TorchServe's gRPC inference port; ``TRISERVE_GATEWAY_GRPC_PORT``, 0 = off), on
the inference listener's address.

A ``grpc.aio`` server on the inference app's event loop (the one its batchers and backend clients
live on), started by the app's lifespan and stopped gracefully (in-flight calls get
``graceful_shutdown_s``) before the rest of the gateway closes. Only a gateway process serves it
(:func:`serve_in_process`, called by :mod:`triserve_gateway.workers`): an app built in-process
(tests, tools) leaves the port alone unless told to (:meth:`GrpcListener.serve`).

Limits as on the HTTP side: messages up to ``max_body_bytes`` (larger: ``RESOURCE_EXHAUSTED``),
at most ``max_connections`` calls at once (above: ``RESOURCE_EXHAUSTED``). Ports as the inference
listener's: one process binds the port exclusively (``grpc.so_reuseport`` off, so a port another
program holds is an error, never shared); with several gateway processes each binds it with
``SO_REUSEPORT`` after the primary has checked that nothing else holds it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from triserve_common.errors import TriserveError
from triserve_gateway.auth import ApiKey
from triserve_gateway.grpc_service import InferenceServicer
from triserve_gateway.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from triserve_gateway.service import InferenceService
from triserve_gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from triserve_gateway.process import ProcessRole

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


class GrpcListenerError(TriserveError):
    """The gRPC port cannot be bound (the gateway does not start)."""


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcListener:
    """The gRPC server of one gateway process (module doc)."""

    def __init__(self, service: InferenceService, key: ApiKey, settings: GatewaySettings) -> None:
        self.servicer = InferenceServicer(service, key)
        self.host = settings.host
        self.port = settings.grpc_port
        self.max_message_bytes = settings.max_body_bytes
        self.max_calls = settings.max_connections
        self.grace_s = settings.graceful_shutdown_s
        self.enabled = False
        self.reuse_port = False
        self._server: grpc.aio.Server | None = None

    def serve(self, reuse_port: bool = False) -> None:
        """Serve the port from the next lifespan start (``reuse_port``: share it with this gateway's
        other processes). A ``grpc_port`` of 0 keeps gRPC off."""
        self.enabled = self.port > 0
        self.reuse_port = reuse_port

    @property
    def address(self) -> str:
        return grpc_address(self.host, self.port)

    def options(self) -> list[tuple[str, int]]:
        """The server's channel options (message size limit, port sharing)."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", int(self.reuse_port)),
        ]

    async def start(self) -> None:
        """Bind and start serving when :meth:`serve` was asked for; :class:`GrpcListenerError`
        when the port cannot be bound."""
        if not self.enabled or self._server is not None:
            return
        server = grpc.aio.server(options=self.options(), maximum_concurrent_rpcs=self.max_calls)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        try:
            server.add_insecure_port(self.address)
        except RuntimeError:
            raise GrpcListenerError(
                f"cannot listen for gRPC on {self.address}: the port is in use or the address is not "
                f"this machine's (setting {GatewaySettings.env_name('grpc_port')}; 0 switches gRPC off)"
            ) from None
        await server.start()
        self._server = server
        log.info("gRPC inference API (KServe v2 %s) on %s", SERVICE_NAME, self.address)

    async def stop(self) -> None:
        """Stop taking calls; calls in flight get ``graceful_shutdown_s`` to finish."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self.grace_s)


def serve_in_process(app: FastAPI, role: ProcessRole, backlog: int) -> None:
    """Make this gateway process serve gRPC (when ``grpc_port`` is set). The primary of several
    processes first binds the port exclusively for a moment — before any other process starts — so
    that a port held by another program is an error rather than shared (as for the inference port)."""
    from triserve_gateway.listeners import bind

    listener: GrpcListener = app.state.grpc
    if listener.port <= 0:
        return
    if role.multiprocess and role.primary:
        bind(listener.host, listener.port, backlog).close()
    listener.serve(reuse_port=role.multiprocess)
