"""Explanation endpoints: TorchServe's ``/explanations`` and KServe v2's ``/explain``.

``POST|PUT /explanations/{model}[/{version}]`` (TorchServe style) takes the image as the raw body
(``curl -T 7.png``) or as multipart form files; ``?steps=N`` (or ``X-Explain-Steps``) sets the
Integrated Gradients steps, ``?target=7`` (or ``X-Explain-Target``) the class to explain (default:
the predicted one). The answer (JSON)::

    {"model_name": "mnist", "model_version": "1", "backend": "torchserve",
     "method": "integrated_gradients", "steps": 32,
     "explanations": [{"label": "7", "target": 7, "probability": 0.99, "convergence_delta": 0.001,
                       "shape": [1, 28, 28], "attributions": [[[...28 floats] x 28]]}]}

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
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from triserve_common import codec
from triserve_common.errors import BadRequestError
from triserve_common.rest import read_body
from triserve_gateway.api_torchserve import forced_backend, form_images
from triserve_gateway.api_v2 import images_of
from triserve_gateway.explain import METHOD, Explainer, ExplainLimits, Explanation
from triserve_gateway.gateway import Gateway
from triserve_gateway.service import InferenceService
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.timing import server_timing

Array = np.ndarray[Any, Any]

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


def register(app: FastAPI, settings: GatewaySettings, service: InferenceService, gateway: Gateway) -> None:
    """Add ``/explanations/...`` and ``/v2/models/.../explain`` to ``app``."""
    limit = settings.max_body_bytes
    explainer = Explainer(
        gateway,
        ExplainLimits(settings.explain_steps, settings.explain_max_steps, settings.explain_max_images),
    )

    async def explanations(request: Request) -> Response:
        start = time.perf_counter()
        model: str = request.path_params["model_name"]
        version: str | None = request.path_params.get("model_version")
        gateway.route(model)
        mv = gateway.catalog.get(model, version)
        steps = explainer.steps(_param(request, "steps", "x-explain-steps"))
        target = explainer.target(mv, _param(request, "target", "x-explain-target"))
        body = await read_body(request, limit)
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            images = await form_images(request, body)
        else:
            images = [body]
        explainer.check_count(len(images))
        what = "request body" if len(images) == 1 else "form part"
        t_pre = time.perf_counter()
        x = await service.preprocess(mv, images, what)
        preprocess_s = time.perf_counter() - t_pre
        e = await explainer.explain(
            mv, version, x, steps=steps, target=target, backend=forced_backend(request),
            request_id=getattr(request.state, "request_id", None),
        )
        headers = _headers(e, preprocess_s, time.perf_counter() - start)
        return JSONResponse(explanation_json(e), headers=headers)

    for path, suffix in (
        ("/explanations/{model_name}", ""),
        ("/explanations/{model_name}/{model_version}", "_version"),
    ):
        for method in ("POST", "PUT"):
            app.add_api_route(
                path, explanations, methods=[method], tags=["TorchServe inference API"],
                summary="Explain a classification: Integrated Gradients attributions per pixel",
                openapi_extra=_EXPLAIN_BODY, operation_id=f"explanations{suffix}_{method.lower()}",
            )

    async def explain_v2(request: Request) -> Response:
        start = time.perf_counter()
        model: str = request.path_params["model_name"]
        version: str | None = request.path_params.get("model_version")
        body = await read_body(request, limit)
        header_length = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH))
        decoded = codec.decode_request(body, header_length)
        gateway.route(model)
        mv = gateway.catalog.get(model, version)
        req = decoded.request
        if len(req.inputs) != 1:
            raise BadRequestError(f"expected exactly one input (BYTES images or FP32 {mv.input.shape})")
        inp = req.inputs[0]
        params = req.parameters or {}
        steps = explainer.steps(None if params.get("steps") is None else str(params["steps"]))
        target = explainer.target(mv, None if params.get("target") is None else str(params["target"]))
        arr = decoded.tensors[inp.name]
        t_pre = time.perf_counter()
        if inp.datatype == "BYTES":
            binary = bool(inp.parameters and "binary_data_size" in inp.parameters)
            images = images_of(inp.name, arr, binary)
            explainer.check_count(len(images))
            x = await service.preprocess(mv, images, f"input '{inp.name}' image")
        elif inp.datatype == mv.input.datatype:
            x = np.ascontiguousarray(arr, dtype=np.float32)
        else:
            raise BadRequestError(
                f"input '{inp.name}' is {inp.datatype}: send {mv.input.datatype} {mv.input.shape} "
                "or BYTES images"
            )
        preprocess_s = time.perf_counter() - t_pre
        e = await explainer.explain(
            mv, version, x, steps=steps, target=target, backend=forced_backend(request),
            request_id=getattr(request.state, "request_id", None),
        )
        labels = np.empty(len(e.targets), dtype=object)
        labels[:] = [e.label(t).encode() for t in e.targets]
        outputs = {"attributions": e.attributions, "label": labels, "convergence_delta": e.deltas}
        binary_out: set[str] | bool = True if decoded.binary_default else decoded.binary_outputs
        content, headers = codec.encode_response(
            mv.name, mv.version, req.id, outputs, binary=binary_out,
            parameters={"method": METHOD, "steps": e.steps, "backend": e.backend},
        )
        headers.update(_headers(e, preprocess_s, time.perf_counter() - start))
        return Response(content, headers=headers)

    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(
            prefix + "/explain", explain_v2, methods=["POST"], tags=["OIP v2"],
            summary="Explain: Integrated Gradients attributions (KServe v2 style)",
        )
