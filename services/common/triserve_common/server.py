"""HTTP plumbing every service shares (gateway and runtimes alike), free of the data plane.

- :class:`RequestIdMiddleware`: ``X-Request-Id`` echoed (or generated) on every response;
- :func:`read_body`: the request body under a byte limit (413 above); :func:`model_target`;
- :func:`serve` / :func:`run_service`: uvicorn with the same options everywhere, and the body of
  each service's console script (settings, logging, app, clear exit on bad config).
"""

from __future__ import annotations

import logging
import random
import re
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triserve_common.errors import (
    BadRequestError,
    ClientClosedRequestError,
    PayloadTooLargeError,
    TriserveError,
)
from triserve_common.limits import ServerLimits, uvicorn_options
from triserve_common.settings import ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_VALID_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")


def new_request_id() -> bytes:
    """A random version-4 UUID as 32 hex digits (``uuid.uuid4().hex``'s format) without building a
    ``UUID`` object or a system call: request ids name requests in logs, they are not secrets."""
    n = random.getrandbits(128)
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    return b"%032x" % n


class RequestIdMiddleware:
    """Echo the client's ``X-Request-Id`` (or a generated one) on every HTTP response (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id: bytes | None = None
        for key, value in scope["headers"]:
            if key == _REQUEST_ID_KEY:
                request_id = value if _VALID_REQUEST_ID.match(value) else None
                break
        rid = request_id or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (_REQUEST_ID_KEY, rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def model_target(request: Request) -> tuple[str, str | None]:
    """Model name and requested version (None = latest) from an OIP/TorchServe-style path."""
    params = request.path_params
    return params["model_name"], params.get("model_version")


async def read_body(request: Request, limit: int, setting: str = "MAX_BODY_BYTES") -> bytes:
    """The request body, refusing (413 naming ``setting``) a declared or streamed size over
    ``limit`` bytes. A client that disconnects mid-body is one log line and a 499."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequestError(f"invalid Content-Length '{declared[:40]}'") from None
        if size > limit:
            raise PayloadTooLargeError(
                f"request body of {size} bytes exceeds the limit of {limit} bytes (setting {setting})"
            )
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            total += len(chunk)
            if total > limit:
                raise PayloadTooLargeError(
                    f"request body exceeds the limit of {limit} bytes (setting {setting})"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        log.info(
            "client disconnected after %d of %s body bytes: %s %s",
            total, declared or "?", request.method, request.url.path[:200],
        )
        raise ClientClosedRequestError(f"client disconnected after {total} body bytes") from None
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def package_version(distribution: str) -> str:
    """The installed version of ``distribution`` (``0+unknown`` when run from a bare checkout)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0+unknown"


def configure_logging(level: str) -> None:
    """One-line log records on stderr."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def serve(app: FastAPI, settings: ServiceSettings, limits: ServerLimits | None = None) -> None:
    """Serve ``app`` on the settings' host/port (uvloop, httptools, no access log, graceful stop);
    with ``limits``, a connection limit and header read / keep-alive timeouts
    (:func:`triserve_common.limits.uvicorn_options`)."""
    options: dict[str, Any] = {"http": "httptools", "timeout_keep_alive": 75}
    if limits is not None:
        options.update(uvicorn_options(limits))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        access_log=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        backlog=4096,
        **options,
    )


def run_service(
    server_name: str,
    make_settings: Callable[[], S],
    make_app: Callable[[S], FastAPI],
    serve_app: Callable[[FastAPI, S], None] = serve,
) -> int:
    """Console-script body of a service: settings, logging, app, uvicorn (``serve_app``).

    A bad setting or a model that cannot be loaded (missing, tampered: ``ArtifactIntegrityError``)
    ends the process with one clear log line and exit status 2 or 1, not a traceback.
    """
    try:
        settings = make_settings()
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"{server_name}: invalid settings: {errors}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        app = make_app(settings)
    except TriserveError as exc:
        log.critical("%s: cannot start: %s", server_name, exc.message)
        return 1
    serve_app(app, settings)
    return 0
