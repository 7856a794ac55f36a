"""KServe v2 / Open Inference Protocol API of the gateway.

``POST /v2/models/{m}[/versions/{v}]/infer`` takes exactly one input, JSON or binary
(``Inference-Header-Content-Length``):

- ``FP32`` image rows: the model input's own shape (``[N,C,H,W]``, from its manifest), or what
  KServe/TorchServe clients send for the same images — ``[N,H,W]``, ``[N,H*W]``, or one image
  ``[H,W]`` / ``[H*W]`` — reshaped to the model's input when each row holds one image's elements;
- ``BYTES`` ``[N]`` (or ``[-1]``): N encoded images (base64 strings in JSON, raw bytes in binary
  mode), preprocessed at the gateway per the model's manifest.

Data is strict (:mod:`triserve_common.tensor_checks`): FP32 takes finite JSON numbers only.

Outputs: the model's ``logits`` by default; ``probabilities`` (softmax, FP32) and ``label``
(BYTES) on request. Binary outputs when asked (``binary_data`` per output or top-level
``binary_data_output``). Backend choice and response headers as in the TorchServe API.
"""

from __future__ import annotations

import time
from enum import Enum
from functools import partial

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from triserve_common import codec
from triserve_common.server import model_target, read_body
from triserve_gateway import __version__
from triserve_gateway import openapi_spec as spec
from triserve_gateway.api_common import DirectRoute, forced_backend, infer_request, request_id_of, service_of
from triserve_gateway.service import InferenceCall
from triserve_gateway.v2_dataplane import (
    SERVER_NAME,
    model_metadata,
    outputs_of,
    tensor_payload,
    wanted_outputs,
)

TAGS: list[str | Enum] = ["OIP v2"]

async def live() -> JSONResponse:
    """Liveness: the gateway process answers."""
    return JSONResponse({"live": True})


async def ready(request: Request) -> JSONResponse:
    """Readiness: every routed model has a routable backend (503 otherwise)."""
    ok = service_of(request).gateway.ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def server_metadata() -> JSONResponse:
    """OIP v2 server metadata."""
    return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]})


async def metadata(request: Request) -> JSONResponse:
    """OIP v2 metadata of a model version as the gateway serves it."""
    gateway = service_of(request).gateway
    target = gateway.resolve(*model_target(request))
    backends = gateway.serving(target.model, target.mv.version)
    return JSONResponse(model_metadata(target.mv, gateway.served_versions(target.model), backends))


async def model_ready(request: Request) -> JSONResponse:
    """Model readiness: a routable backend serves it (503 otherwise; 404 when not served)."""
    gateway = service_of(request).gateway
    target = gateway.resolve(*model_target(request))
    ok = gateway.model_ready(target.model)
    return JSONResponse({"name": target.model, "ready": ok}, status_code=200 if ok else 503)


async def infer(request: Request) -> Response:
    """OIP v2 inference: FP32 tensors or BYTES encoded images in, the requested outputs back."""
    start = time.perf_counter()
    service = service_of(request)
    model, version = model_target(request)
    with service.track(model, start, version) as track:
        settings = service.settings
        body = await read_body(request, settings.max_body_bytes, settings.env_name("max_body_bytes"))
        length = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH))
        decoded = codec.decode_request(body, length, service.decode_limits)
        prepare = partial(tensor_payload, decoded)
        call = InferenceCall(model, version, request_id_of(request), forced_backend(request), prepare)
        served = await infer_request(request, track, call)
    outputs = outputs_of(served.mv, served.result.value, wanted_outputs(decoded.request, served.mv))
    binary: set[str] | bool = True if decoded.binary_default else decoded.binary_outputs
    content, headers = codec.encode_response(
        model, served.mv.version, decoded.request.id, outputs, binary=binary
    )
    headers.update(served.headers())
    return Response(content, headers=headers)


def register(app: FastAPI) -> None:
    """Add the OIP v2 routes to ``app``."""
    app.add_api_route("/v2/health/live", live, methods=["GET"], tags=TAGS, summary="Liveness",
                      responses=spec.ok(spec.LIVE, "Live"))
    app.add_api_route("/v2/health/ready", ready, methods=["GET"], tags=TAGS, summary="Readiness",
                      responses={**spec.ok(spec.READY, "Ready"),
                                 503: {"description": "Not ready",
                                       "content": {"application/json": {"schema": spec.READY}}}})
    app.add_api_route("/v2", server_metadata, methods=["GET"], tags=TAGS, summary="Server metadata",
                      responses=spec.ok(spec.SERVER_METADATA, "Server metadata"))
    for prefix, suffix in (
        ("/v2/models/{model_name}", ""),
        ("/v2/models/{model_name}/versions/{model_version}", "_version"),
    ):
        app.add_api_route(prefix, metadata, methods=["GET"], tags=TAGS, summary="Model metadata",
                          operation_id=f"model_metadata{suffix}", openapi_extra=spec.with_path(prefix),
                          responses=spec.metadata_responses())
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], tags=TAGS,
                          summary="Model readiness (a healthy backend exists)",
                          operation_id=f"model_ready{suffix}", openapi_extra=spec.with_path(prefix),
                          responses=spec.model_ready_responses())
        app.router.add_api_route(prefix + "/infer", infer, methods=["POST"], tags=TAGS,
                                 summary="Inference: FP32 tensors or BYTES encoded images",
                                 operation_id=f"infer{suffix}",
                                 openapi_extra=spec.with_path(prefix, spec.infer_request_body()),
                                 responses=spec.infer_responses(), route_class_override=DirectRoute)
