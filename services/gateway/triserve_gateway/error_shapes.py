"""Error bodies in the shape of the API that was called.

- OIP v2 (paths under ``/v2``): ``{"error": "<message>"}``;
- everything else is TorchServe's API: ``{"code": 404, "type": "ModelNotFoundException",
  "message": "..."}``, the shape TorchServe's clients parse. ``type`` is TorchServe's exception
  name (:mod:`triserve_gateway.torchserve_errors`, shared with the management API) where TorchServe
  has one, else our error's class name (``UnsupportedMediaTypeException``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from triserve_common.errors import TriserveError, error_body
from triserve_gateway.torchserve_errors import (
    METHOD_NOT_ALLOWED_MESSAGE,
    NOT_FOUND_MESSAGE,
    TorchServeError,
    torchserve_body,
)
from triserve_gateway.torchserve_errors import torchserve_type as ts_type

log = logging.getLogger(__name__)

_ROUTING_ERRORS = {  # Starlette's own 404/405 (no route, no method): TorchServe's names and words
    404: ("ResourceNotFoundException", NOT_FOUND_MESSAGE),
    405: ("MethodNotAllowedException", METHOD_NOT_ALLOWED_MESSAGE),
}
_OURS = (415, 422, 499, 502)
"""Statuses TorchServe has no exception name for: named after our error class instead."""


def is_v2(path: str) -> bool:
    """Whether ``path`` belongs to the OIP v2 API."""
    return path == "/v2" or path.startswith("/v2/")


def torchserve_type(status: int, exc: Exception | None) -> str:
    """TorchServe's ``type`` for an error (see module doc and :mod:`triserve_gateway.torchserve_errors`)."""
    if isinstance(exc, HTTPException) and status in _ROUTING_ERRORS:
        return _ROUTING_ERRORS[status][0]
    if isinstance(exc, TriserveError) and (isinstance(exc, TorchServeError) or status not in _OURS):
        return ts_type(exc)
    if isinstance(exc, TriserveError):
        name = type(exc).__name__
        return name[: -len("Error")] + "Exception" if name.endswith("Error") else name
    return "BadRequestException" if status == 400 else "InternalServerException"


def torchserve_error(status: int, message: str, exc: Exception | None = None) -> dict[str, object]:
    """``{"code", "type", "message"}`` as TorchServe answers errors."""
    if isinstance(exc, HTTPException) and status in _ROUTING_ERRORS:
        message = _ROUTING_ERRORS[status][1]
    return torchserve_body(status, torchserve_type(status, exc), message)


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
    return JSONResponse(torchserve_error(status, message, exc), status_code=status, headers=headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as a plain 500 in the API's shape."""
    log.exception("unhandled error", exc_info=exc)
    return render_error(request, 500, "internal server error", exc)
