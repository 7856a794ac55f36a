"""TorchServe's error answers: ``{"code": 404, "type": "ModelNotFoundException", "message": ...}``.

The management API raises these with TorchServe's exception names; any other
:class:`~triserve_common.errors.TriserveError` is given the name TorchServe uses for its status.
"""

from __future__ import annotations

from typing import Any

from triserve_common.errors import TriserveError


class TorchServeError(TriserveError):
    """An error answered in TorchServe's shape, with TorchServe's exception name."""

    ts_type = "InternalServerException"


def _error(name: str, status: int) -> type[TorchServeError]:
    attrs = {"status_code": status, "ts_type": name, "__doc__": f"TorchServe's {name}."}
    return type(name, (TorchServeError,), attrs)


BadRequestException = _error("BadRequestException", 400)
ModelNotFoundException = _error("ModelNotFoundException", 404)
ModelVersionNotFoundException = _error("ModelVersionNotFoundException", 404)
ResourceNotFoundException = _error("ResourceNotFoundException", 404)
InvalidModelVersionException = _error("InvalidModelVersionException", 403)
MethodNotAllowedException = _error("MethodNotAllowedException", 405)
ConflictStatusException = _error("ConflictStatusException", 409)
InternalServerException = _error("InternalServerException", 500)
ServiceUnavailableException = _error("ServiceUnavailableException", 503)

NOT_FOUND_MESSAGE = "Requested resource is not found, please refer to API document."
METHOD_NOT_ALLOWED_MESSAGE = "Requested method is not allowed, please refer to API document."

_TYPE_BY_STATUS = {
    400: "BadRequestException",
    401: "InvalidKeyException",
    403: "InvalidModelVersionException",
    404: "ModelNotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictStatusException",
    413: "RequestEntityTooLargeException",
    503: "ServiceUnavailableException",
    504: "RequestTimeoutException",
}


def torchserve_type(exc: TriserveError) -> str:
    """TorchServe's exception name for ``exc``."""
    if isinstance(exc, TorchServeError):
        return exc.ts_type
    return _TYPE_BY_STATUS.get(exc.status_code, "InternalServerException")


def torchserve_body(status: int, error_type: str, message: str) -> dict[str, Any]:
    """TorchServe's error body."""
    return {"code": status, "type": error_type, "message": message}
