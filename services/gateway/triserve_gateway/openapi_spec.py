"""What the gateway's OpenAPI description says each operation answers (FastAPI ``responses=``).

Every status an operation can answer is documented with its body: the TorchServe API's errors
are ``{"code", "type", "message"}``, the OIP v2 API's ``{"error"}`` (see
:mod:`triserve_gateway.error_shapes`). ``schemathesis`` checks the running gateway against this
description (``tests/hostile/test_schemathesis.py``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from triserve_common import v2

Responses = dict[int | str, dict[str, Any]]

TORCHSERVE_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["code", "type", "message"],
    "properties": {
        "code": {"type": "integer", "description": "The HTTP status."},
        "type": {"type": "string", "description": "TorchServe's exception name (ModelNotFoundException)."},
        "message": {"type": "string", "description": "What was wrong, and the setting that raises a limit."},
    },
}
V2_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What was wrong."}},
}
_WHY = {
    400: "Malformed request (names the problem)",
    404: "Unknown model or version (names those that exist)",
    405: "Method not allowed",
    413: "Over a limit (names it and the setting that raises it)",
    415: "Not an image in an accepted format",
    422: "Undecodable image, or input far outside the model's range",
    500: "Internal error",
    502: "A backend failed",
    503: "No healthy backend",
    504: "A backend timed out",
}
CLIENT = (400, 404, 413)
INFERENCE = (*CLIENT, 415, 422, 502, 503, 504)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(shape: dict[str, Any], statuses: tuple[int, ...]) -> Responses:
    """The error responses ``statuses`` with the error body ``shape``."""
    return {status: _json(shape, _WHY[status]) for status in statuses}


def ok(schema: dict[str, Any], description: str = "Success") -> Responses:
    """A 200 JSON response."""
    return {200: _json(schema, description)}


ANY_JSON: dict[str, Any] = {}


def _fields(**types: str) -> dict[str, Any]:
    """An object schema whose fields are all required, of the given JSON types."""
    properties = {k: {"type": t} for k, t in types.items()}
    return {"type": "object", "required": list(types), "properties": properties}


STATUS_BODY = _fields(status="string")
LIVE = _fields(live="boolean")
READY = _fields(ready="boolean")
MODEL_READY = _fields(name="string", ready="boolean")
OPENAPI_DOC: dict[str, Any] = {"type": "object", "required": ["openapi", "paths"]}


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a pydantic model with its ``$defs`` inlined (valid anywhere in the
    OpenAPI document; the v2 models are not recursive)."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


def predictions_responses() -> Responses:
    """``/predictions``: the label (a JSON number), a list of labels, or top-k objects."""
    return {**ok(ANY_JSON, "The label, a list of labels, or label → probability"),
            **errors(TORCHSERVE_ERROR, INFERENCE)}


def infer_responses() -> Responses:
    """OIP v2 ``infer``: JSON outputs, or JSON header + binary tensors."""
    return {
        200: {
            "description": "OIP v2 inference response (binary tensors when asked)",
            "content": {
                "application/json": {"schema": schema_of(v2.InferenceResponse)},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **errors(V2_ERROR, INFERENCE),
    }


def explanation_responses() -> Responses:
    """``/explanations``: attributions per image (TorchServe API errors)."""
    return {**ok({"type": "object", "required": ["explanations"]}, "Attributions per image"),
            **errors(TORCHSERVE_ERROR, INFERENCE)}


def redirect_responses() -> Responses:
    """``GET /``: a redirect to the web demo page (which answers HTML)."""
    return {307: {"description": "Redirect to /demo/"}, **html_responses()}


def html_responses() -> Responses:
    return {200: {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}


def png_responses() -> Responses:
    """The demo's preprocessed input: a PNG, or a TorchServe API error."""
    return {
        200: {"description": "The model's input as an image",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **errors(TORCHSERVE_ERROR, (*CLIENT, 415, 422)),
    }


def image_request_body() -> dict[str, Any]:
    """``openapi_extra`` of an endpoint taking one encoded image as the raw body."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "description": "An encoded image (PNG, JPEG, ...).",
                            "content": {"application/octet-stream": binary, "image/png": binary}}}


def metadata_responses() -> Responses:
    return {**ok(schema_of(v2.MetadataModelResponse), "OIP v2 model metadata"),
            **errors(V2_ERROR, (404,))}


def model_ready_responses() -> Responses:
    return {**ok(MODEL_READY, "Ready"), 503: _json(MODEL_READY, "Not ready"), **errors(V2_ERROR, (404,))}


EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
"""A 1x1 black grayscale PNG, base64: any model's preprocessing resizes it to its own input."""
INFER_EXAMPLE: dict[str, Any] = {
    "id": "example",
    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [EXAMPLE_PNG]}],
    "outputs": [{"name": "label"}, {"name": "probabilities"}],
}


def infer_request_body() -> dict[str, Any]:
    """``openapi_extra`` of OIP v2 ``infer``: a JSON request, or JSON header + binary tensors."""
    return {
        "requestBody": {
            "required": True,
            "description": "OIP v2 inference request: JSON, or JSON header + binary tensors "
            "(Inference-Header-Content-Length). One input: FP32 images (the model input [N,C,H,W] of its "
            "metadata, or [N,H,W], [N,H*W], [H,W]) or BYTES [N] / [-1] encoded images.",
            "content": {
                "application/json": {"schema": schema_of(v2.InferenceRequest), "example": INFER_EXAMPLE},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "parameters": [
            {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
             "schema": {"type": "integer", "minimum": 0},
             "description": "Length of the JSON header when binary tensors follow it."},
        ],
    }


MODEL_LIST: dict[str, Any] = {
    "type": "object",
    "required": ["models"],
    "properties": {
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"modelName": {"type": "string"}, "modelUrl": {"type": "string"}},
            },
        }
    },
}
DESCRIPTION: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
DEMO_MODELS: dict[str, Any] = {
    "type": "object",
    "required": ["models"],
    "properties": {"models": {"type": "array", "items": {"type": "object", "required": ["modelName"]}}},
}
SERVER_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}


_PATH_EXAMPLES = {"model_name": "mnist", "model_version": "1"}


def path_parameters(path: str) -> list[dict[str, Any]]:
    """The ``{name}`` parameters of a path template (handlers read them from the request)."""
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"},
         **({"example": _PATH_EXAMPLES[n]} if n in _PATH_EXAMPLES else {})}
        for n in names
    ]


def with_path(path: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for ``path``: ``extra`` plus the path's parameters."""
    extra = dict(extra or {})
    extra["parameters"] = [*path_parameters(path), *extra.get("parameters", [])]
    return extra


def unique_operation_ids(app: FastAPI) -> None:
    """Give each method of a multi-method route its own ``operationId`` (FastAPI gives them one:
    ``/predictions`` is one route for POST and PUT, so that a 405's ``Allow`` names both)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Duplicate Operation ID")
            schema = generate()  # cached by FastAPI as app.openapi_schema, fixed below in place
        ops = [op for path in schema["paths"].values() for op in path.values()]
        counts = Counter(op.get("operationId") for op in ops)
        for path in schema["paths"].values():
            for method, op in path.items():
                if counts[op.get("operationId")] > 1:
                    op["operationId"] = f"{op['operationId'].rsplit('_', 1)[0]}_{method}"
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
