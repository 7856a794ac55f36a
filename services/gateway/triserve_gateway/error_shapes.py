"""Error bodies in the shape of the API that was called.

- OIP v2 (paths under ``/v2``): ``{"error": "<message>"}``;
- everything else is TorchServe's API: ``{"code": 404, "type": "ModelNotFoundException",
  "message": "..."}``, the shape TorchServe's clients parse. ``type`` is TorchServe's exception
  name where TorchServe has one for the status, else our error's class name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from triserve_common.errors import ModelNotFoundError, error_body

log = logging.getLogger(__name__)

_TORCHSERVE_TYPES = {
    400: "BadRequestException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    408: "RequestTimeoutException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
    504: "RequestTimeoutException",
}
_TORCHSERVE_ROUTING_MESSAGES = {
    404: "Requested resource is not found, please refer to API document.",
    405: "Requested method is not allowed, please refer to API document.",
}


def is_v2(path: str) -> bool:
    """Whether ``path`` belongs to the OIP v2 API."""
    return path == "/v2" or path.startswith("/v2/")


def torchserve_type(status: int, exc: Exception | None) -> str:
    """TorchServe's ``type`` for an error: its exception name (see module doc)."""
    if isinstance(exc, ModelNotFoundError):
        return "ModelNotFoundException"
    if status in _TORCHSERVE_TYPES:
        return _TORCHSERVE_TYPES[status]
    name = type(exc).__name__ if exc is not None else "Error"
    return name[: -len("Error")] + "Exception" if name.endswith("Error") else name


def torchserve_body(status: int, message: str, exc: Exception | None = None) -> dict[str, object]:
    """``{"code", "type", "message"}`` as TorchServe answers errors."""
    if isinstance(exc, HTTPException) and status in _TORCHSERVE_ROUTING_MESSAGES:
        message = _TORCHSERVE_ROUTING_MESSAGES[status]
    return {"code": status, "type": torchserve_type(status, exc), "message": message}


def render_error(
    request: Request,
    status: int,
    message: str,
    exc: Exception,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error response of ``request`` in its API's shape (an ``ErrorRenderer``)."""
    if is_v2(request.url.path):
        return JSONResponse(error_body(message), status_code=status, headers=headers)
    return JSONResponse(torchserve_body(status, message, exc), status_code=status, headers=headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as a plain 500 in the API's shape."""
    log.exception("unhandled error", exc_info=exc)
    return render_error(request, 500, "internal server error", exc)
