"""Load shedding at the door (pure ASGI, just inside the key check): while a model's admission
queue is full, its inference requests get their 503 + ``Retry-After`` (in the API's error shape)
before any routing, body reading or parsing, so that refusing costs far less than serving and an
overloaded gateway keeps serving what it admitted (and its health endpoints). The core's admission
control stays the authority; this only answers early what it would answer anyway.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from triserve_common.errors import error_body
from triserve_gateway.error_shapes import is_v2, torchserve_error
from triserve_gateway.gateway import Gateway


def inference_model(method: str, path: str) -> str | None:
    """The model an inference request names (``/predictions/{m}[/{v}]``,
    ``/v2/models/{m}[/versions/{v}]/infer``), else None."""
    if method not in ("POST", "PUT"):
        return None
    parts = path.strip("/").split("/")
    if len(parts) in (2, 3) and parts[0] == "predictions":
        return parts[1]
    if parts[-1] == "infer" and len(parts) in (4, 6) and parts[:2] == ["v2", "models"]:
        return parts[2]
    return None


class LoadSheddingMiddleware:
    """503 at once for inference requests of a model whose admission is full (see module doc)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            model = inference_model(scope["method"], scope["path"])
            refusal = None if model is None else self.gateway.overloaded(model)
            if refusal is not None:
                status, message = refusal.status_code, refusal.message
                v2 = is_v2(scope["path"])
                body = error_body(message) if v2 else torchserve_error(status, message, refusal)
                response = JSONResponse(body, status, refusal.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
