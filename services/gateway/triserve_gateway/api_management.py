"""The management listener (port 8081): TorchServe 0.12's management API and the v2 model repository.

TorchServe's paths, parameters, status codes and JSON answers::

    GET    /models?limit&next_page_token                 list (paginated, 100 a page at most)
    POST   /models?url&model_name&initial_workers&synchronous&batch_size&max_batch_delay&response_timeout
    GET    /models/{m} | /models/{m}/{v} | /models/{m}/all
    PUT    /models/{m}[/{v}]?min_worker&max_worker&synchronous
    PUT    /models/{m}/{v}/set-default
    DELETE /models/{m}[/{v}]
    OPTIONS / , GET /api-description                     this API's OpenAPI description

and the KServe v2 / Triton repository extension (:mod:`triserve_common.repository_api`) over every
backend. Errors are TorchServe's ``{"code", "type", "message"}`` (``{"error"}`` under ``/v2``).
Every request needs the management key (:mod:`triserve_gateway.auth`). Unlike TorchServe, a
non-integer where an integer is expected is a 400, not silently the default.
"""

from __future__ import annotations

import json
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from triserve_common.errors import TriserveError, error_body
from triserve_common.repository_api import add_repository_routes
from triserve_common.server import RequestIdMiddleware, read_body
from triserve_gateway import __version__
from triserve_gateway.auth import ApiKey, KeyMiddleware, UnauthorizedError
from triserve_gateway.describe import describe_models, list_models
from triserve_gateway.manager import Answer, ModelManager
from triserve_gateway.repository import GatewayRepository
from triserve_gateway.torchserve_errors import (
    METHOD_NOT_ALLOWED_MESSAGE,
    NOT_FOUND_MESSAGE,
    BadRequestException,
    torchserve_body,
    torchserve_type,
)

TAGS: list[Any] = ["TorchServe management API"]
MAX_REGISTER_BODY = 64 * 1024
UNSUPPORTED_REGISTER_PARAMS = frozenset({"handler", "runtime", "s3_sse_kms"})
"""TorchServe register parameters the gateway refuses (400) rather than silently ignores."""


def _manager(request: Request) -> ModelManager:
    return cast(ModelManager, request.app.state.manager)


Params = dict[str, str]


def _params(request: Request) -> Params:
    return dict(request.query_params)


def _int(params: Params, name: str, default: int | None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequestException(f"Invalid value for parameter {name}: '{raw}' is not an integer") from None


def _bool(params: Params, name: str, default: bool) -> bool:
    """TorchServe's ``Boolean.parseBoolean``: "true" in any case is true, anything else false."""
    raw = params.get(name)
    return default if raw is None else raw.strip().lower() == "true"


def _status(answer: Answer) -> JSONResponse:
    return JSONResponse({"status": answer.message}, status_code=answer.status)


async def _register_params(request: Request) -> dict[str, Any]:
    """Register parameters from the query, or from a JSON body as TorchServe also accepts."""
    params = _params(request)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        try:
            body = json.loads(await read_body(request, MAX_REGISTER_BODY) or b"{}")
        except ValueError:
            raise BadRequestException("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequestException("request body must be a JSON object")
        params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in body.items()}
    unsupported = sorted(set(params) & UNSUPPORTED_REGISTER_PARAMS)
    if unsupported:
        raise BadRequestException(
            f"parameter {', '.join(unsupported)} is not supported: the gateway registers the model store's "
            "archives as they are (handler and runtime included)"
        )
    return {
        "url": params.get("url"),
        "model_name": params.get("model_name"),
        "initial_workers": _int(params, "initial_workers", None),
        "synchronous": _bool(params, "synchronous", True),
        "batch_size": _int(params, "batch_size", None),
        "max_batch_delay": _int(params, "max_batch_delay", None),
        "response_timeout": _int(params, "response_timeout", None),
    }


async def register_model(request: Request) -> JSONResponse:
    """Register a store model version on every backend that can run it."""
    params = await _register_params(request)
    return _status(await _manager(request).register(**params))


async def list_registered(request: Request) -> JSONResponse:
    """Registered models, sorted, paginated."""
    params = _params(request)
    limit = _int(params, "limit", 100)
    token = _int(params, "next_page_token", 0)
    assert limit is not None and token is not None
    return JSONResponse(list_models(_manager(request), limit, token))


async def describe_default(request: Request, model_name: str) -> JSONResponse:
    """The default version's description."""
    return JSONResponse(await describe_models(_manager(request), model_name, None))


async def describe_version(request: Request, model_name: str, model_version: str) -> JSONResponse:
    """One version's description, or every version's (``all``)."""
    return JSONResponse(await describe_models(_manager(request), model_name, model_version))


async def _scale(request: Request, model_name: str, model_version: str | None) -> JSONResponse:
    params = _params(request)
    min_worker = _int(params, "min_worker", 1)
    assert min_worker is not None
    max_worker = _int(params, "max_worker", None)
    synchronous = _bool(params, "synchronous", False)
    manager = _manager(request)
    return _status(await manager.scale(model_name, model_version, min_worker, max_worker, synchronous))


async def scale_default(request: Request, model_name: str) -> JSONResponse:
    """Scale the workers of the default version (or of ``?model_version=``)."""
    return await _scale(request, model_name, request.query_params.get("model_version"))


async def scale_version(request: Request, model_name: str, model_version: str) -> JSONResponse:
    """Scale the workers of one version."""
    return await _scale(request, model_name, model_version)


async def set_default(request: Request, model_name: str, model_version: str) -> JSONResponse:
    """Make a version the default."""
    return JSONResponse({"status": _manager(request).set_default(model_name, model_version)})


async def unregister_default(request: Request, model_name: str) -> JSONResponse:
    """Unregister the default version (403 while other versions remain)."""
    return JSONResponse({"status": await _manager(request).unregister(model_name, None)})


async def unregister_version(request: Request, model_name: str, model_version: str) -> JSONResponse:
    """Unregister one version."""
    return JSONResponse({"status": await _manager(request).unregister(model_name, model_version)})


async def api_description(request: Request) -> JSONResponse:
    """This API's OpenAPI description (TorchServe answers ``OPTIONS /`` with its own)."""
    return JSONResponse(request.app.openapi())


# ------------------------------------------------------------------ errors


def _is_v2(scope: Scope) -> bool:
    return str(scope.get("path", "")).startswith("/v2/")


def error_response(scope: Scope, status: int, error_type: str, message: str) -> JSONResponse:
    """TorchServe's error shape, or OIP's ``{"error"}`` under ``/v2``."""
    body = error_body(message) if _is_v2(scope) else torchserve_body(status, error_type, message)
    return JSONResponse(body, status_code=status)


async def render_unauthorized(scope: Scope, exc: UnauthorizedError) -> tuple[int, bytes, str]:
    """A 401 in the shape of the API asked (for :class:`~triserve_gateway.auth.KeyMiddleware`)."""
    response = error_response(scope, exc.status_code, "InvalidKeyException", exc.message)
    return response.status_code, bytes(response.body), "application/json"


def install_management_errors(app: FastAPI) -> None:
    """Render errors as TorchServe does (see :func:`error_response`)."""

    async def triserve(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TriserveError)
        return error_response(request.scope, exc.status_code, torchserve_type(exc), exc.message)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.scope, 400, "BadRequestException", f"invalid request: {exc}")

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(request.scope, 404, "ResourceNotFoundException", NOT_FOUND_MESSAGE)
        if exc.status_code == 405:
            return error_response(request.scope, 405, "MethodNotAllowedException", METHOD_NOT_ALLOWED_MESSAGE)
        return error_response(request.scope, exc.status_code, "BadRequestException", str(exc.detail))

    app.add_exception_handler(TriserveError, triserve)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)


def create_management_app(manager: ModelManager, key: ApiKey) -> FastAPI:
    """The management listener's app (see module doc); ``key`` guards every route."""
    app = FastAPI(
        title="triserve gateway management API",
        version=__version__,
        description="TorchServe 0.12's management API and the KServe v2 model repository extension, "
        "over every backend of the gateway.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.manager = manager
    install_management_errors(app)
    app.add_api_route("/models", list_registered, methods=["GET"], tags=TAGS, summary="List models")
    app.add_api_route("/models", register_model, methods=["POST"], tags=TAGS, summary="Register a model")
    app.add_api_route("/models/{model_name}", describe_default, methods=["GET"], tags=TAGS,
                      summary="Describe a model's default version")
    app.add_api_route("/models/{model_name}/{model_version}", describe_version, methods=["GET"], tags=TAGS,
                      summary="Describe a version (or all)")
    app.add_api_route("/models/{model_name}", scale_default, methods=["PUT"], tags=TAGS,
                      summary="Scale workers")
    app.add_api_route("/models/{model_name}/{model_version}", scale_version, methods=["PUT"], tags=TAGS,
                      summary="Scale a version's workers")
    app.add_api_route("/models/{model_name}/{model_version}/set-default", set_default, methods=["PUT"],
                      tags=TAGS, summary="Set the default version")
    app.add_api_route("/models/{model_name}", unregister_default, methods=["DELETE"], tags=TAGS,
                      summary="Unregister the default version")
    app.add_api_route("/models/{model_name}/{model_version}", unregister_version, methods=["DELETE"],
                      tags=TAGS, summary="Unregister a version")
    app.add_api_route("/", api_description, methods=["OPTIONS"], include_in_schema=False)
    app.add_api_route("/api-description", api_description, methods=["GET"], include_in_schema=False)
    add_repository_routes(app, GatewayRepository(manager))
    app.add_middleware(KeyMiddleware, key=key, render=render_unauthorized, exempt=frozenset())
    app.add_middleware(RequestIdMiddleware)
    return app
