"""TorchServe-compatible API: ``/predictions``, ``/ping``, ``/models`` (management style).

``POST|PUT /predictions/{model}[/{version}]`` takes the raw image as the body (``curl -T 0.png``)
or multipart form files (``curl -F data=@0.png``; every file part is one image, in order).
Answers:

- default: the label, exactly as TorchServe's stock MNIST example answers it (body ``0``);
  several images → a JSON list (``[0, 7]``);
- ``?topk=3`` or header ``X-TopK: 3``: the top k labels with softmax probabilities, as
  TorchServe's image classifiers answer (``{"0": 0.99, ...}``, indented like TorchServe);
  several images → a list of those.

Backend choice: header ``X-Backend: onnx|paddle|torchserve`` or ``?backend=...`` (default:
the routing strategy). Responses carry ``X-Backend``, ``X-Model-Version``, ``X-Request-Id`` and
``Server-Timing``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from triserve_common.errors import BadRequestError
from triserve_common.rest import read_body
from triserve_gateway.gateway import Gateway
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import InferenceService
from triserve_gateway.settings import GatewaySettings

Array = np.ndarray[Any, Any]
JSON = "application/json"

_PREDICTIONS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The encoded image (any Pillow format) as the raw body, or multipart form "
        "fields, one image each.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"data": {"type": "string", "format": "binary"}}}
            },
        },
    },
    "parameters": [
        {"name": "topk", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
         "description": "Answer the top k classes with probabilities (also header X-TopK)."},
        {"name": "backend", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "Force a backend: onnx, paddle or torchserve (also header X-Backend)."},
    ],
}


def label_value(mv: ModelVersion, index: int) -> Any:
    """A label as TorchServe's MNIST handler answers it: numeric labels as JSON numbers."""
    label = mv.labels[index] if index < len(mv.labels) else str(index)
    return int(label) if label.isdigit() else label


def topk_of(mv: ModelVersion, logits: Array, k: int) -> list[dict[str, float]]:
    """Per row: the k most probable labels → softmax probability, most probable first."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    labels = mv.labels or [str(i) for i in range(logits.shape[1])]
    return [{labels[i]: float(p[i]) for i in row} for p, row in zip(probs, order, strict=True)]


def render_predictions(mv: ModelVersion, logits: Array, topk: int | None, several: bool) -> bytes:
    """The body TorchServe would answer (see module doc)."""
    if topk is None:
        values = [label_value(mv, int(i)) for i in logits.argmax(axis=1)]
        return json.dumps(values if several else values[0]).encode()
    ranked = topk_of(mv, logits, topk)
    return json.dumps(ranked if several else ranked[0], indent=2).encode()


def parse_topk(request: Request, classes: int) -> int | None:
    raw = request.query_params.get("topk") or request.headers.get("x-topk")
    if raw is None:
        return None
    try:
        k = int(raw)
    except ValueError:
        raise BadRequestError(f"topk must be an integer, got '{raw}'") from None
    if not 1 <= k <= classes:
        raise BadRequestError(f"topk must be between 1 and {classes}, got {k}")
    return k


def forced_backend(request: Request) -> str | None:
    """Backend named by ``X-Backend`` or ``?backend=`` (lower-cased), if any."""
    value = request.headers.get("x-backend") or request.query_params.get("backend")
    return value.strip().lower() if value else None


async def form_images(request: Request, body: bytes) -> list[bytes]:
    """The file parts of a ``multipart/form-data`` ``body``, in order (400 when malformed or none).

    ``body`` was already read under the size limit; it is replayed to Starlette's form parser
    (``python-multipart``), one part at most as big as the body itself.
    """
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_part_size=len(body) + 1)
    except HTTPException as exc:  # Starlette's MultiPartException, as a 400 inside an app
        raise BadRequestError(f"malformed multipart/form-data request: {exc.detail}") from None
    try:
        images = [await value.read() for _, value in form.multi_items() if isinstance(value, UploadFile)]
    finally:
        await form.close()
    if not images:
        raise BadRequestError("multipart/form-data request without a file part (curl -F data=@0.png)")
    return images


def register(app: FastAPI, settings: GatewaySettings, service: InferenceService, gateway: Gateway) -> None:
    """Add the TorchServe-style routes to ``app``."""
    limit = settings.max_body_bytes

    async def predictions(request: Request) -> Response:
        start = time.perf_counter()
        params = request.path_params
        model: str = params["model_name"]
        version: str | None = params.get("model_version")
        request_id: str | None = getattr(request.state, "request_id", None)
        with service.track(model, start) as track:
            body = await read_body(request, limit)
            content_type = request.headers.get("content-type", "")
            if content_type.lower().startswith("multipart/form-data"):
                images = await form_images(request, body)
            else:
                images = [body]
            mv = gateway.catalog.get(model, version)
            topk = parse_topk(request, len(mv.labels) or mv.output.shape[-1])
            what = "request body" if len(images) == 1 else "form part"
            served = await service.run(
                track, model, version, request_id, forced_backend(request), images=images, what=what
            )
        content = render_predictions(served.mv, served.result.value, topk, len(images) > 1)
        return Response(content, media_type=JSON, headers=served.headers())

    for path, suffix in (
        ("/predictions/{model_name}", ""),
        ("/predictions/{model_name}/{model_version}", "_version"),
    ):
        for method in ("POST", "PUT"):
            app.add_api_route(
                path, predictions, methods=[method], tags=["TorchServe inference API"],
                summary="Classify image(s) (TorchServe-compatible)", openapi_extra=_PREDICTIONS_BODY,
                operation_id=f"predictions{suffix}_{method.lower()}",
            )

    async def ping() -> Response:
        healthy = gateway.ready()
        body = json.dumps({"status": "Healthy" if healthy else "Unhealthy"}, indent=2) + "\n"
        return Response(body, status_code=200 if healthy else 500, media_type=JSON)

    app.add_api_route("/ping", ping, methods=["GET"], tags=["TorchServe inference API"],
                      summary="Health, as TorchServe answers it")

    async def list_models() -> JSONResponse:
        return JSONResponse(
            {"models": [{"modelName": name, "modelUrl": name} for name in sorted(gateway.routing.models)]}
        )

    async def describe_model(model_name: str) -> JSONResponse:
        return JSONResponse([await gateway.describe(model_name)])

    app.add_api_route("/models", list_models, methods=["GET"], tags=["Management"],
                      summary="List models (TorchServe management style)")
    app.add_api_route("/models/{model_name}", describe_model, methods=["GET"], tags=["Management"],
                      summary="Describe a model: per backend URL, health, version, engine")
