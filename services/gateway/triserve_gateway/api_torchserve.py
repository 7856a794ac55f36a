"""TorchServe-compatible inference API: ``/predictions``, ``/ping`` (the management API is on its own
port: :mod:`triserve_gateway.api_management`).

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
from enum import Enum
from functools import partial
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from triserve_common.errors import BadRequestError, PayloadTooLargeError
from triserve_common.server import model_target, read_body
from triserve_gateway import openapi_spec as spec
from triserve_gateway.answers import class_count, predicted_labels, topk_of
from triserve_gateway.api_common import (
    JSON,
    DirectRoute,
    forced_backend,
    infer_request,
    request_id_of,
    service_of,
)
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import InferenceCall, Payload
from triserve_gateway.settings import GatewaySettings

Array = np.ndarray[Any, Any]
TAGS: list[str | Enum] = ["TorchServe inference API"]

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


def label_value(label: str) -> Any:
    """A label as TorchServe's MNIST handler answers it: numeric labels as JSON numbers."""
    return int(label) if label.isdigit() else label


def render_predictions(mv: ModelVersion, logits: Array, topk: int | None, several: bool) -> bytes:
    """The body TorchServe would answer (see module doc)."""
    if topk is None:
        values = [label_value(label) for label in predicted_labels(mv, logits)]
        return json.dumps(values if several else values[0]).encode()
    ranked = topk_of(mv, logits, topk)
    return json.dumps(ranked if several else ranked[0], indent=2).encode()


def parse_topk(raw: str | None, classes: int) -> int | None:
    """``?topk=`` / ``X-TopK`` as an int in ``[1, classes]`` (400 otherwise); None when absent."""
    if raw is None:
        return None
    try:
        k = int(raw)
    except ValueError:
        raise BadRequestError(f"topk must be an integer, got '{raw[:40]}'") from None
    if not 1 <= k <= classes:
        raise BadRequestError(f"topk must be between 1 and {classes}, got {k}")
    return k


def raw_topk(request: Request) -> str | None:
    """The ``topk`` the client asked for, unparsed."""
    return request.query_params.get("topk") or request.headers.get("x-topk")


def images_payload(images: list[bytes], topk: str | None, mv: ModelVersion) -> Payload:
    """The images as the payload, once ``topk`` is checked against the model's classes."""
    parse_topk(topk, class_count(mv))
    return Payload(images=images, what="request body" if len(images) == 1 else "form part")


async def form_images(request: Request, body: bytes, max_images: int) -> list[bytes]:
    """The file parts of a ``multipart/form-data`` ``body``, in order (400 when malformed or none,
    413 over ``max_images`` parts).

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
        form = await Request(request.scope, replay).form(
            max_part_size=len(body) + 1, max_files=max_images, max_fields=max_images
        )
    except HTTPException as exc:  # Starlette's MultiPartException, as a 400 inside an app
        if str(exc.detail).startswith("Too many"):
            raise PayloadTooLargeError(
                f"multipart/form-data request with more than {max_images} parts (setting "
                f"{GatewaySettings.env_name('max_images_per_request')})"
            ) from None
        raise BadRequestError(f"malformed multipart/form-data request: {exc.detail}") from None
    try:
        images = [await value.read() for _, value in form.multi_items() if isinstance(value, UploadFile)]
    finally:
        await form.close()
    if not images:
        raise BadRequestError("multipart/form-data request without a file part (curl -F data=@0.png)")
    return images


async def request_images(request: Request, settings: GatewaySettings) -> list[bytes]:
    """The images of a predictions request: the raw body, or each file part of a form."""
    body = await read_body(request, settings.max_body_bytes, settings.env_name("max_body_bytes"))
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return await form_images(request, body, settings.max_images_per_request)
    return [body]


async def predictions(request: Request) -> Response:
    """Classify the image(s) of one request and answer as TorchServe does (see module doc)."""
    start = time.perf_counter()
    service = service_of(request)
    model, version = model_target(request)
    topk = raw_topk(request)
    with service.track(model, start, version) as track:
        images = await request_images(request, service.settings)
        prepare = partial(images_payload, images, topk)
        call = InferenceCall(model, version, request_id_of(request), forced_backend(request), prepare)
        served = await infer_request(request, track, call)
    k = parse_topk(topk, class_count(served.mv))
    content = render_predictions(served.mv, served.result.value, k, len(images) > 1)
    return Response(content, media_type=JSON, headers=served.headers())


async def ping(request: Request) -> Response:
    """Health, as TorchServe answers it: Healthy (200) when every model has a routable backend."""
    healthy = service_of(request).gateway.ready()
    body = json.dumps({"status": "Healthy" if healthy else "Unhealthy"}, indent=2) + "\n"
    return Response(body, status_code=200 if healthy else 500, media_type=JSON)


async def api_description(request: Request) -> JSONResponse:
    """The OpenAPI description of this API, as TorchServe answers ``GET /api-description`` and
    ``OPTIONS /``."""
    return JSONResponse(request.app.openapi())


def register(app: FastAPI) -> None:
    """Add the TorchServe-style routes to ``app``."""
    for path in ("/predictions/{model_name}", "/predictions/{model_name}/{model_version}"):
        app.router.add_api_route(  # one route for both methods: a 405 names them both in Allow
            path, predictions, methods=["POST", "PUT"], tags=TAGS,
            summary="Classify image(s) (TorchServe-compatible)",
            openapi_extra=spec.with_path(path, _PREDICTIONS_BODY), responses=spec.predictions_responses(),
            route_class_override=DirectRoute,
        )
    app.add_api_route("/ping", ping, methods=["GET"], tags=TAGS, summary="Health, as TorchServe answers it",
                      responses={**spec.ok(spec.STATUS_BODY, "Healthy"),
                                 500: {"description": "Unhealthy",
                                       "content": {"application/json": {"schema": spec.STATUS_BODY}}}})
    for path, method in (("/api-description", "GET"), ("/", "OPTIONS")):
        app.add_api_route(path, api_description, methods=[method], tags=TAGS,
                          summary="This OpenAPI description (as TorchServe answers it)",
                          operation_id=f"api_description_{method.lower()}",
                          responses=spec.ok(spec.OPENAPI_DOC, "OpenAPI description"))
