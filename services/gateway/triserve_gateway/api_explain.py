"""Explanation endpoints: TorchServe's ``/explanations`` and KServe v2's ``/explain``.

``POST|PUT /explanations/{model}[/{version}]`` (TorchServe style) takes the image as the raw body
(``curl -T 7.png``) or as multipart form files; ``?steps=N`` (or ``X-Explain-Steps``) sets the
Integrated Gradients steps, ``?target=7`` (or ``X-Explain-Target``) the class to explain (default:
the predicted one). The answer (JSON)::

    {"model_name": "mnist", "model_version": "1", "backend": "torchserve",
     "method": "integrated_gradients", "steps": 32,
     "explanations": [{"label": "7", "target": 7, "probability": 0.99, "convergence_delta": 0.001,
                       "shape": [C, H, W], "attributions": [[[...W floats] x H] x C]}]}

``POST /v2/models/{m}[/versions/{v}]/explain`` (OIP v2 request as for ``/infer``: one ``BYTES``
input of encoded images or one ``FP32`` tensor; request ``parameters`` ``steps`` and ``target``)
answers the outputs ``attributions`` (FP32, shaped like the input), ``label`` (BYTES: the explained
class) and ``convergence_delta`` (FP32 ``[N]``), with ``parameters`` method, steps and backend.

Bounds (see :mod:`triserve_gateway.explain`): ``TRISERVE_GATEWAY_EXPLAIN_MAX_IMAGES`` images and
``TRISERVE_GATEWAY_EXPLAIN_MAX_STEPS`` steps per request. Responses carry ``X-Backend``,
``X-Model-Version`` and ``Server-Timing`` like predictions.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from triserve_common import codec
from triserve_common.errors import BadRequestError
from triserve_common.server import model_target, read_body
from triserve_gateway import openapi_spec as spec
from triserve_gateway.api_common import forced_backend, request_id_of, service_of
from triserve_gateway.api_torchserve import request_images
from triserve_gateway.explain import METHOD, Explainer, ExplainLimits, Explanation
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import InferenceService, Payload
from triserve_gateway.timing import server_timing
from triserve_gateway.v2_dataplane import as_model_rows, images_of

Array = np.ndarray[Any, Any]
TAGS: list[str | Enum] = ["TorchServe inference API"]

_EXPLAIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The encoded image as the raw body, or multipart form fields (one image each).",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {"name": "steps", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
         "description": "Integrated Gradients steps (also header X-Explain-Steps)."},
        {"name": "target", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "Class to explain, label or index (also header X-Explain-Target)."},
    ],
}


def _param(request: Request, query: str, header: str) -> str | None:
    return request.query_params.get(query) or request.headers.get(header)


def _headers(e: Explanation, preprocess_s: float, total_s: float) -> dict[str, str]:
    return {
        "X-Backend": e.backend,
        "X-Model-Version": e.mv.version,
        "Server-Timing": server_timing(preprocess_s, 0.0, e.backend_s, total_s),
    }


def explanation_json(e: Explanation) -> dict[str, Any]:
    """The TorchServe-style body of an explanation (see module doc)."""
    probs = e.probabilities()
    return {
        "model_name": e.mv.name,
        "model_version": e.mv.version,
        "backend": e.backend,
        "method": METHOD,
        "steps": e.steps,
        "explanations": [
            {
                "label": e.label(t),
                "target": t,
                "probability": float(probs[i, t]),
                "convergence_delta": float(e.deltas[i]),
                "shape": list(e.attributions.shape[1:]),
                "attributions": e.attributions[i].tolist(),
            }
            for i, t in enumerate(e.targets)
        ],
    }


def explainer_of(request: Request) -> Explainer:
    """The app's explainer (set by :func:`register`)."""
    return cast(Explainer, request.app.state.explainer)


async def _input(service: InferenceService, mv: ModelVersion, payload: Payload) -> tuple[Array, float]:
    """The model input of ``payload`` and how long preprocessing took."""
    start = time.perf_counter()
    x = await service.model_input(mv, payload)
    return x, time.perf_counter() - start


async def explanations(request: Request) -> Response:
    """Explain the image(s) of one request, TorchServe style (see module doc)."""
    start = time.perf_counter()
    service, explainer = service_of(request), explainer_of(request)
    model, version = model_target(request)
    mv = service.gateway.resolve(model, version).mv
    steps = explainer.steps(_param(request, "steps", "x-explain-steps"))
    target = explainer.target(mv, _param(request, "target", "x-explain-target"))
    images = await request_images(request, service.settings)
    explainer.check_count(len(images))
    what = "request body" if len(images) == 1 else "form part"
    x, preprocess_s = await _input(service, mv, Payload(images=images, what=what))
    e = await explainer.explain(
        mv, mv.version, x, steps=steps, target=target, backend=forced_backend(request),
        request_id=request_id_of(request),
    )
    return JSONResponse(explanation_json(e), headers=_headers(e, preprocess_s, time.perf_counter() - start))


def _v2_payload(mv: ModelVersion, decoded: codec.DecodedRequest, explainer: Explainer) -> Payload:
    """The one input of an OIP v2 explain request: BYTES images or a tensor like the model input."""
    req = decoded.request
    if len(req.inputs) != 1:
        raise BadRequestError(f"expected exactly one input (BYTES images or FP32 {mv.input.shape})")
    inp = req.inputs[0]
    arr = decoded.tensors[inp.name]
    if inp.datatype == "BYTES":
        binary = bool(inp.parameters and "binary_data_size" in inp.parameters)
        images = images_of(inp.name, arr, binary)
        explainer.check_count(len(images))
        return Payload(images=images, what=f"input '{inp.name}' image")
    if inp.datatype == mv.input.datatype:
        return Payload(tensor=np.ascontiguousarray(as_model_rows(inp.name, arr, mv), dtype=np.float32))
    raise BadRequestError(
        f"input '{inp.name}' is {inp.datatype}: send {mv.input.datatype} {mv.input.shape} or BYTES images"
    )


async def explain_v2(request: Request) -> Response:
    """Explain, KServe v2 style (see module doc)."""
    start = time.perf_counter()
    service, explainer = service_of(request), explainer_of(request)
    model, version = model_target(request)
    body = await read_body(request, service.settings.max_body_bytes)
    header_length = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH))
    decoded = codec.decode_request(body, header_length, service.decode_limits)
    mv = service.gateway.resolve(model, version).mv
    params = decoded.request.parameters or {}
    steps = explainer.steps(None if params.get("steps") is None else str(params["steps"]))
    target = explainer.target(mv, None if params.get("target") is None else str(params["target"]))
    x, preprocess_s = await _input(service, mv, _v2_payload(mv, decoded, explainer))
    e = await explainer.explain(
        mv, mv.version, x, steps=steps, target=target, backend=forced_backend(request),
        request_id=request_id_of(request),
    )
    labels = np.empty(len(e.targets), dtype=object)
    labels[:] = [e.label(t).encode() for t in e.targets]
    outputs = {"attributions": e.attributions, "label": labels, "convergence_delta": e.deltas}
    binary: set[str] | bool = True if decoded.binary_default else decoded.binary_outputs
    content, headers = codec.encode_response(
        mv.name, mv.version, decoded.request.id, outputs, binary=binary,
        parameters={"method": METHOD, "steps": e.steps, "backend": e.backend},
    )
    headers.update(_headers(e, preprocess_s, time.perf_counter() - start))
    return Response(content, headers=headers)


def register(app: FastAPI) -> None:
    """Add ``/explanations/...`` and ``/v2/models/.../explain`` to ``app`` (after ``app.state`` is set)."""
    settings = app.state.settings
    limits = ExplainLimits(settings.explain_steps, settings.explain_max_steps, settings.explain_max_images)
    app.state.explainer = Explainer(app.state.gateway, limits)
    for path in ("/explanations/{model_name}", "/explanations/{model_name}/{model_version}"):
        app.add_api_route(  # one route for both methods: a 405 names them both in Allow
            path, explanations, methods=["POST", "PUT"], tags=TAGS,
            summary="Explain a classification: Integrated Gradients attributions per pixel",
            openapi_extra=spec.with_path(path, _EXPLAIN_BODY), responses=spec.explanation_responses(),
        )
    for prefix, suffix in (
        ("/v2/models/{model_name}", ""),
        ("/v2/models/{model_name}/versions/{model_version}", "_version"),
    ):
        app.add_api_route(
            prefix + "/explain", explain_v2, methods=["POST"], tags=["OIP v2"],
            summary="Explain: Integrated Gradients attributions (KServe v2 style)",
            operation_id=f"explain{suffix}", openapi_extra=spec.with_path(prefix, spec.infer_request_body()),
            responses=spec.infer_responses(),
        )
