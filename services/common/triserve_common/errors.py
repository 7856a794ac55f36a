"""Errors that carry their HTTP status, and the FastAPI handlers that render them.

Error bodies are the Open Inference Protocol's ``{"error": "<message>"}`` unless the app installs
another :class:`ErrorRenderer` (the gateway answers its TorchServe API in TorchServe's shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class TriserveError(Exception):
    """Base error: ``status_code`` is the HTTP status a client sees."""

    status_code: int = 500
    headers: dict[str, str] | None = None
    """Extra response headers (e.g. ``Retry-After`` on a 503 from admission control)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequestError(TriserveError):
    """The request is malformed or does not match the model (400)."""

    status_code = 400


class ModelNotFoundError(TriserveError):
    """Unknown model or version (404)."""

    status_code = 404


class PayloadTooLargeError(TriserveError):
    """Body, image or pixel count over a configured limit (413)."""

    status_code = 413


class UnsupportedMediaTypeError(TriserveError):
    """The body is not of a type we accept, e.g. not an image (415)."""

    status_code = 415


class UnprocessableError(TriserveError):
    """Well-formed type, undecodable content, e.g. a truncated image (422)."""

    status_code = 422


class ClientClosedRequestError(TriserveError):
    """The client went away before its request body was complete (499, nginx's status for it:
    counted under its own label, never as a server error; nobody reads the answer)."""

    status_code = 499


class ModelNotReadyError(TriserveError):
    """The model or every backend for it is not ready (503)."""

    status_code = 503


class RequestTimeoutError(TriserveError):
    """The client took too long to send its request body (408)."""

    status_code = 408


class BackendError(TriserveError):
    """A backend failed (502 unless told otherwise)."""

    status_code = 502


class BackendTimeoutError(TriserveError):
    """A backend did not answer in time (504)."""

    status_code = 504


class ArtifactIntegrityError(TriserveError):
    """An artifact's checksum or size does not match its manifest: refuse to serve it."""

    status_code = 500


def error_body(message: str) -> dict[str, Any]:
    """OIP v2 error body."""
    return {"error": message}


def _format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


class ErrorRenderer(Protocol):
    """Builds the error response of a request (the body's shape is the API's business)."""

    def __call__(
        self, request: Request, status: int, message: str, exc: Exception, headers: Mapping[str, str] | None
    ) -> JSONResponse: ...


def v2_error(
    request: Request, status: int, message: str, exc: Exception, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The OIP v2 error response: ``{"error": message}``."""
    return JSONResponse(error_body(message), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, render: ErrorRenderer = v2_error) -> None:
    """Render :class:`TriserveError`, validation and HTTP errors with ``render`` (default:
    ``{"error": ...}`` JSON)."""

    async def triserve_handler(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TriserveError)
        return render(request, exc.status_code, exc.message, exc, exc.headers)

    async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return render(request, 400, _format_validation(exc), exc, None)

    async def http_handler(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return render(request, exc.status_code, str(exc.detail), exc, exc.headers)

    app.add_exception_handler(TriserveError, triserve_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)
