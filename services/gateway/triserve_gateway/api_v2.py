"""KServe v2 / Open Inference Protocol API of the gateway.

``POST /v2/models/{m}[/versions/{v}]/infer`` takes exactly one input, JSON or binary
(``Inference-Header-Content-Length``):

- ``FP32`` shaped like the model input (``[-1,1,28,28]``): passed through to the backend;
- ``BYTES`` ``[N]``: N encoded images (base64 strings in JSON, raw bytes in binary mode),
  preprocessed at the gateway per the model's manifest.

Outputs: the model's ``logits`` by default; ``probabilities`` (softmax, FP32) and ``label``
(BYTES) on request. Binary outputs when asked (``binary_data`` per output or top-level
``binary_data_output``). Backend choice and response headers as in the TorchServe API.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from triserve_common import codec
from triserve_common.errors import BadRequestError
from triserve_common.rest import read_body
from triserve_gateway import __version__
from triserve_gateway.api_torchserve import forced_backend
from triserve_gateway.gateway import Gateway
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import InferenceService
from triserve_gateway.settings import GatewaySettings

Array = np.ndarray[Any, Any]
SERVER_NAME = "triserve-gateway"
EXTRA_OUTPUTS = ("probabilities", "label")

_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "OIP v2 inference request: JSON, or JSON header + binary tensors "
        "(Inference-Header-Content-Length). One input: FP32 [-1,1,28,28] or BYTES [N] encoded images.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


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


def softmax(logits: Array) -> Array:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: Array = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def model_metadata(mv: ModelVersion, versions: list[str], backends: list[str]) -> dict[str, Any]:
    """OIP v2 model metadata as the gateway serves the model."""
    classes = len(mv.labels) or mv.output.shape[-1]
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


def register(app: FastAPI, settings: GatewaySettings, service: InferenceService, gateway: Gateway) -> None:
    """Add the OIP v2 routes to ``app``."""
    limit = settings.max_body_bytes

    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready() -> JSONResponse:
        ok = gateway.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata() -> JSONResponse:
        return JSONResponse(
            {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    app.add_api_route("/v2/health/live", live, methods=["GET"], tags=["OIP v2"])
    app.add_api_route("/v2/health/ready", ready, methods=["GET"], tags=["OIP v2"])
    app.add_api_route("/v2", server_metadata, methods=["GET"], tags=["OIP v2"])

    def target(request: Request) -> tuple[str, str | None]:
        params = request.path_params
        return params["model_name"], params.get("model_version")

    async def metadata(request: Request) -> JSONResponse:
        name, version = target(request)
        route = gateway.route(name)
        mv = gateway.catalog.get(name, version)
        return JSONResponse(
            model_metadata(mv, gateway.catalog.versions(name), [b.name for b in route.backends])
        )

    async def model_ready(request: Request) -> JSONResponse:
        name, version = target(request)
        gateway.route(name)
        gateway.catalog.get(name, version)
        ok = gateway.model_ready(name)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        start = time.perf_counter()
        name, version = target(request)
        request_id: str | None = getattr(request.state, "request_id", None)
        with service.track(name, start) as track:
            body = await read_body(request, limit)
            decoded = codec.decode_request(
                body, codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH))
            )
            gateway.route(name)
            mv = gateway.catalog.get(name, version)
            req = decoded.request
            if len(req.inputs) != 1:
                raise BadRequestError(
                    f"expected exactly one input (FP32 '{mv.input.name}' {mv.input.shape} or BYTES "
                    f"encoded images), got {len(req.inputs)}"
                )
            inp = req.inputs[0]
            arr = decoded.tensors[inp.name]
            wanted = [o.name for o in req.outputs] if req.outputs else [mv.output.name]
            known = (mv.output.name, *EXTRA_OUTPUTS)
            unknown = [o for o in wanted if o not in known]
            if unknown:
                raise BadRequestError(f"unknown output(s) {', '.join(unknown)} (outputs: {', '.join(known)})")
            backend = forced_backend(request)
            if inp.datatype == "BYTES":
                images = images_of(inp.name, arr, _is_binary(inp))
                served = await service.run(
                    track, name, version, request_id, backend, images=images, what=f"input '{inp.name}' image"
                )
            elif inp.datatype == mv.input.datatype:
                tensor = np.ascontiguousarray(arr, dtype=np.float32)
                served = await service.run(track, name, version, request_id, backend, tensor=tensor)
            else:
                raise BadRequestError(
                    f"input '{inp.name}' is {inp.datatype}: send {mv.input.datatype} {mv.input.shape} "
                    "tensors or BYTES encoded images"
                )
        logits = served.result.value
        outputs: dict[str, Array] = {}
        for out in wanted:
            if out == mv.output.name:
                outputs[out] = logits
            elif out == "probabilities":
                outputs[out] = softmax(logits)
            else:
                labels = mv.labels or [str(i) for i in range(logits.shape[1])]
                label_arr = np.empty(logits.shape[0], dtype=object)
                label_arr[:] = [labels[int(i)].encode() for i in logits.argmax(axis=1)]
                outputs[out] = label_arr
        binary: set[str] | bool = True if decoded.binary_default else decoded.binary_outputs
        content, headers = codec.encode_response(
            name, served.mv.version, req.id, outputs, binary=binary
        )
        headers.update(served.headers())
        return Response(content, headers=headers)

    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(prefix, metadata, methods=["GET"], tags=["OIP v2"], summary="Model metadata")
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], tags=["OIP v2"],
                          summary="Model readiness (a healthy backend exists)")
        app.add_api_route(prefix + "/infer", infer, methods=["POST"], tags=["OIP v2"],
                          summary="Inference: FP32 tensors or BYTES encoded images",
                          openapi_extra=_INFER_BODY)
