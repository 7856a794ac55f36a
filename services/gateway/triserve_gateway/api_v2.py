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

import base64
import binascii
import math
import time
from enum import Enum
from functools import partial
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from triserve_common import codec, v2
from triserve_common.errors import BadRequestError
from triserve_common.server import model_target, read_body
from triserve_gateway import __version__
from triserve_gateway import openapi_spec as spec
from triserve_gateway.api_common import (
    DirectRoute,
    class_count,
    forced_backend,
    infer_request,
    predicted_labels,
    request_id_of,
    service_of,
    softmax,
)
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import InferenceCall, Payload

Array = np.ndarray[Any, Any]
SERVER_NAME = "triserve-gateway"
EXTRA_OUTPUTS = ("probabilities", "label")
TAGS: list[str | Enum] = ["OIP v2"]

def _is_binary(inp: Any) -> bool:
    return bool(inp.parameters and "binary_data_size" in inp.parameters)


def images_of(name: str, arr: Array, binary: bool) -> list[bytes]:
    """The encoded images of a BYTES input (base64-decoded when it came as JSON)."""
    items = list(arr.ravel())
    if not items:
        raise BadRequestError(f"input '{name}' holds no image")
    if binary:
        return [bytes(i) for i in items]
    out = []
    for idx, item in enumerate(items):
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequestError(
                f"input '{name}' element {idx} is not base64: BYTES images in JSON must be base64 "
                "encoded (or send them raw with the binary tensor extension)"
            ) from None
    return out


def model_metadata(mv: ModelVersion, versions: list[str], backends: list[str]) -> dict[str, Any]:
    """OIP v2 model metadata as the gateway serves the model."""
    classes = class_count(mv)
    return {
        "name": mv.name,
        "versions": versions,
        "platform": SERVER_NAME,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in mv.inputs],
        "outputs": [
            *({"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in mv.outputs),
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "version": mv.version,
            "labels": mv.labels,
            "backends": backends,
            "bytes_input": "a single BYTES [N] input of encoded images (base64 in JSON, raw in binary) "
            "is preprocessed at the gateway",
            "preprocessing": mv.preprocessor.spec.model_dump(),
        },
    }


def wanted_outputs(request: v2.InferenceRequest, mv: ModelVersion) -> list[str]:
    """Names of the outputs asked for (default: the model's), 400 naming any unknown one."""
    wanted = [o.name for o in request.outputs] if request.outputs else [mv.output.name]
    known = (mv.output.name, *EXTRA_OUTPUTS)
    unknown = [o for o in wanted if o not in known]
    if unknown:
        raise BadRequestError(f"unknown output(s) {', '.join(unknown)} (outputs: {', '.join(known)})")
    return wanted


def tensor_payload(decoded: codec.DecodedRequest, mv: ModelVersion) -> Payload:
    """The one input of a v2 request as the payload: BYTES images or the model's FP32 tensor."""
    req = decoded.request
    if len(req.inputs) != 1:
        raise BadRequestError(
            f"expected exactly one input (FP32 '{mv.input.name}' {mv.input.shape} or BYTES "
            f"encoded images), got {len(req.inputs)}"
        )
    inp = req.inputs[0]
    arr = decoded.tensors[inp.name]
    wanted_outputs(req, mv)
    if inp.datatype == "BYTES":
        if arr.ndim != 1:
            raise BadRequestError(
                f"input '{inp.name}': BYTES images take shape [N] (or [-1]), got {list(arr.shape)}"
            )
        return Payload(images=images_of(inp.name, arr, _is_binary(inp)), what=f"input '{inp.name}' image")
    if inp.datatype == mv.input.datatype:
        return Payload(tensor=np.ascontiguousarray(as_model_rows(inp.name, arr, mv), dtype=np.float32))
    raise BadRequestError(
        f"input '{inp.name}' is {inp.datatype}: send {mv.input.datatype} {mv.input.shape} "
        "tensors or BYTES encoded images"
    )


def _squeezed(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def as_model_rows(name: str, arr: Array, mv: ModelVersion) -> Array:
    """``arr`` reshaped to the model input ``[N, *row]`` (see module doc); 400 when its rows are
    not the model's (one row = one image: ``[C,H,W]``, ``[H,W]`` or ``[H*W]`` of its input)."""
    row = list(mv.input.shape[1:])
    if any(d < 0 for d in row):
        return arr
    size = math.prod(row)
    images = {_squeezed(row), (size,)}
    if arr.ndim >= 2 and _squeezed(arr.shape[1:]) in images:
        return arr.reshape(arr.shape[0], *row)
    if _squeezed(arr.shape) in images:
        return arr.reshape(1, *row)
    raise BadRequestError(
        f"input '{name}': shape {list(arr.shape)} is not rows of the model's input "
        f"{mv.input.shape}: send [N, {', '.join(map(str, row))}], "
        f"[N, {', '.join(map(str, _squeezed(row)))}], [N, {size}] or one image "
        f"[{', '.join(map(str, _squeezed(row)))}]"
    )


def outputs_of(mv: ModelVersion, logits: Array, wanted: list[str]) -> dict[str, Array]:
    """The requested outputs computed from the model's logits."""
    outputs: dict[str, Array] = {}
    for out in wanted:
        if out == mv.output.name:
            outputs[out] = logits
        elif out == "probabilities":
            outputs[out] = softmax(logits).astype(np.float32)
        else:
            label_arr = np.empty(logits.shape[0], dtype=object)
            label_arr[:] = [label.encode() for label in predicted_labels(mv, logits)]
            outputs[out] = label_arr
    return outputs


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
