"""``inference.GRPCInferenceService`` (KServe v2 gRPC) over the gateway's one data plane.

Each RPC does what its REST twin in :mod:`triserve_gateway.api_v2` does, with the same helpers:
``ModelInfer`` decodes the message into the REST endpoint's decoded request
(:mod:`triserve_gateway.grpc_tensors`) and runs an :class:`~triserve_gateway.service.InferenceCall`
through :meth:`InferenceService.infer <triserve_gateway.service.InferenceService.infer>`.

Request metadata (HTTP headers' counterparts, lower-case keys):

- ``authorization: Bearer <key>`` when the inference API requires a key (``ServerLive`` and
  ``ServerReady`` stay open, as the REST health probes);
- ``x-backend: onnx`` forces a backend (as the ``X-Backend`` header);
- ``x-request-timeout: <ms>`` asks for a shorter deadline than the gateway's; the call's own gRPC
  deadline counts the same way (the shorter wins);
- ``x-request-id``: the id the gateway logs and sends to its backends (else the message's ``id``
  when it is a valid one, else a generated one); the message's ``id`` is echoed in the answer.

Trailing metadata of an answer: ``x-request-id``, and after an inference ``x-backend``,
``x-model-version``, ``server-timing``; ``retry-after`` with an overload error. Errors are the
gateway's errors with their gRPC code (:mod:`triserve_gateway.grpc_status`) and message. A client
that cancels its call (or whose deadline passes) cancels the request: it leaves the admission or
batch queue it waits in.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import grpc

from triserve_common.errors import BadRequestError, ClientClosedRequestError, TriserveError
from triserve_common.server import new_request_id
from triserve_gateway import __version__
from triserve_gateway.auth import ApiKey
from triserve_gateway.deadline import Deadline, request_budget_s
from triserve_gateway.grpc_status import grpc_code
from triserve_gateway.grpc_tensors import decode_infer_request, infer_response, metadata_response
from triserve_gateway.proto import grpc_predict_v2_pb2 as pb
from triserve_gateway.service import InferenceCall, InferenceService, RequestTrack, Served
from triserve_gateway.v2_dataplane import (
    SERVER_NAME,
    model_metadata,
    outputs_of,
    tensor_payload,
    wanted_outputs,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Metadata = dict[str, str]
_VALID_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
"""A request id the gateway passes on (printable ASCII, as the REST ``X-Request-Id``)."""


def metadata_of(context: grpc.aio.ServicerContext) -> Metadata:
    """The call's metadata as a dict (text values only; the first of a repeated key)."""
    out: Metadata = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out.setdefault(key, value)
    return out


def _request_id(metadata: Metadata, message_id: str) -> str:
    for candidate in (metadata.get("x-request-id", ""), message_id):
        if _VALID_ID.match(candidate):
            return candidate
    return new_request_id().decode()


class InferenceServicer:
    """The six RPCs of ``inference.GRPCInferenceService`` (registered with the generated
    ``add_GRPCInferenceServiceServicer_to_server``)."""

    def __init__(self, service: InferenceService, key: ApiKey) -> None:
        self.service = service
        self.key = key
        self.calls = service.metrics.grpc_requests

    async def _rpc(
        self, method: str, context: grpc.aio.ServicerContext, body: Callable[[Metadata, str], Awaitable[T]],
        open_: bool = False, message_id: str = "",
    ) -> T:
        """Run ``body(metadata, request_id)``: key check (unless ``open_``), request id (of the metadata,
        else ``message_id``), error → gRPC status, call count by method and code."""
        metadata = metadata_of(context)
        request_id = _request_id(metadata, message_id)
        trailing = [("x-request-id", request_id)]
        try:
            if not open_:
                self.key.check(metadata.get("authorization"))
            result = await body(metadata, request_id)
        except TriserveError as exc:
            error = exc
        except Exception:
            log.exception("gRPC %s failed", method)
            error = TriserveError("internal error (the gateway's log has the details)")
        else:
            self.calls.labels(method, grpc.StatusCode.OK.name).inc()
            return result
        code = grpc_code(error.status_code)
        self.calls.labels(method, code.name).inc()
        retry_after = (error.headers or {}).get("Retry-After")
        if retry_after is not None:
            trailing.append(("retry-after", retry_after))
        await context.abort(code, error.message, tuple(trailing))
        raise AssertionError("context.abort returned")  # pragma: no cover (it raises)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        """Liveness: the gateway process answers."""

        async def body(_: Metadata, __: str) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._rpc("ServerLive", context, body, open_=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        """Readiness: every routed model has a routable backend."""

        async def body(_: Metadata, __: str) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.service.gateway.ready())

        return await self._rpc("ServerReady", context, body, open_=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        """Model readiness: a routable backend serves it (NOT_FOUND when it is not served)."""

        async def body(_: Metadata, __: str) -> pb.ModelReadyResponse:
            gateway = self.service.gateway
            target = gateway.resolve(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=gateway.model_ready(target.model))

        return await self._rpc("ModelReady", context, body)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Server name and version."""

        async def body(_: Metadata, __: str) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

        return await self._rpc("ServerMetadata", context, body)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """A model version's metadata as the gateway serves it (inputs, outputs, versions)."""

        async def body(_: Metadata, __: str) -> pb.ModelMetadataResponse:
            gateway = self.service.gateway
            target = gateway.resolve(request.name, request.version or None)
            backends = gateway.serving(target.model, target.mv.version)
            versions = gateway.served_versions(target.model)
            return metadata_response(model_metadata(target.mv, versions, backends))

        return await self._rpc("ModelMetadata", context, body)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        """Inference: FP32 tensors or BYTES encoded images in, the requested outputs back."""

        async def body(metadata: Metadata, request_id: str) -> pb.ModelInferResponse:
            return await self._infer(request, context, metadata, request_id)

        return await self._rpc("ModelInfer", context, body, message_id=request.id)

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, metadata: Metadata,
        request_id: str,
    ) -> pb.ModelInferResponse:
        start = time.perf_counter()
        service = self.service
        if not request.model_name:
            raise BadRequestError("model_name is required")
        model, version = request.model_name, request.model_version or None
        with service.track(model, start, version) as track:
            decoded = decode_infer_request(request, service.decode_limits)
            backend = metadata.get("x-backend", "").strip().lower() or None
            call = InferenceCall(model, version, request_id, backend, partial(tensor_payload, decoded))
            served = await self._run(track, call, context, metadata)
        outputs = outputs_of(served.mv, served.result.value, wanted_outputs(decoded.request, served.mv))
        typed = any(t.HasField("contents") for t in request.inputs)
        response = infer_response(model, served.mv.version, request.id, outputs, raw=not typed)
        served_headers = ((k.lower(), v) for k, v in served.headers().items())
        context.set_trailing_metadata((("x-request-id", request_id), *served_headers))
        return response

    async def _run(
        self, track: RequestTrack, call: InferenceCall, context: grpc.aio.ServicerContext, metadata: Metadata
    ) -> Served:
        """``call`` under its deadline: the gateway's ``request_timeout_ms``, or less when the call's
        gRPC deadline or ``x-request-timeout`` asks for less (counted from the call's arrival). gRPC
        cancels this task when the client cancels or its deadline passes: the request ends as a
        499 / 504 in the metrics."""
        settings = self.service.settings
        budget = request_budget_s(metadata.get("x-request-timeout"), settings.request_timeout_ms)
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        deadline = Deadline(budget - (time.perf_counter() - track.start))
        try:
            return await self.service.infer(track, call, deadline)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if deadline.expired():
                raise deadline.exceeded("waiting for the answer") from None
            raise ClientClosedRequestError("the client cancelled the call") from None
