"""API keys of the gateway's listeners, as TorchServe 0.11+ does token authorization.

- **Management** (port 8081) always requires ``Authorization: Bearer <key>``. The key comes from the
  ``management_key`` setting (a secret), else from ``management_key_file`` when that file exists
  (e.g. a mounted Kubernetes Secret), else it is generated at first start and written to
  ``management_key_file`` with mode 0600; the log names the file, never the key.
- **Inference** (port 8080) is open unless an inference key is configured (``inference_key`` or an
  existing ``inference_key_file``); then it requires that key.
- **Metrics** (port 8082) are open.
- ``disable_token_auth`` switches every check off (TorchServe's ``--disable-token-auth``, for local
  development and for running TorchServe's own API test collections), with a warning in the log.

A wrong or missing key is answered 401 with a JSON error (and ``WWW-Authenticate: Bearer``).
Keys are compared in constant time and never logged or exported as metrics.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from triserve_common.errors import TriserveError

log = logging.getLogger(__name__)

AUTH_FAILED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
"""TorchServe's message for a missing or wrong key."""

_EXEMPT_PATHS = frozenset({"/ping", "/v2/health/live", "/v2/health/ready"})
"""Health probes stay open on the inference port (load balancers and kubelets carry no key)."""


class UnauthorizedError(TriserveError):
    """Missing or wrong API key (401)."""

    status_code = 401


class KeyFileError(TriserveError):
    """A key file cannot be read or written (the gateway does not start)."""


@dataclass(frozen=True)
class ApiKey:
    """A listener's key; ``None`` value = that listener is open."""

    value: str | None
    source: str
    """Where the key came from (a setting name or a file path): safe to log."""

    def check(self, authorization: str | None) -> None:
        """Pass when open or when ``authorization`` is ``Bearer <the key>``; else raise 401."""
        if self.value is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.value.encode()):
            raise UnauthorizedError(AUTH_FAILED)


OPEN = ApiKey(None, "open")


def read_key_file(path: Path) -> str:
    """The key in ``path`` (surrounding whitespace stripped); refuses an empty file."""
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if not key:
        raise KeyFileError(f"key file {path} is empty")
    return key


def write_new_key(path: Path) -> str:
    """Generate a key and create ``path`` holding it, readable by the owner only (0600)."""
    key = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def management_key(secret: str | None, key_file: Path, disabled: bool) -> ApiKey:
    """The management listener's key (see module doc); generated into ``key_file`` when there is none."""
    if disabled:
        log.warning("token authorization is DISABLED (disable_token_auth): anyone who reaches the "
                    "management port can register, scale and unregister models")
        return OPEN
    if secret:
        return ApiKey(secret, "setting management_key")
    if key_file.exists():
        log.info("management API key read from %s", key_file)
        return ApiKey(read_key_file(key_file), str(key_file))
    key = write_new_key(key_file)
    log.info("management API requires a key (Authorization: Bearer <key>): generated and written to %s "
             "(mode 0600)", key_file)
    return ApiKey(key, str(key_file))


def inference_key(secret: str | None, key_file: Path | None, disabled: bool) -> ApiKey:
    """The inference listener's key: open unless a key (or an existing key file) is configured."""
    if disabled:
        return OPEN
    if secret:
        return ApiKey(secret, "setting inference_key")
    if key_file is not None:
        if not key_file.exists():
            raise KeyFileError(f"inference key file {key_file} does not exist")
        log.info("inference API requires a key, read from %s", key_file)
        return ApiKey(read_key_file(key_file), str(key_file))
    return OPEN


ErrorRenderer = Callable[[Scope, UnauthorizedError], Awaitable[tuple[int, bytes, str]]]
"""``(scope, error)`` → (status, body, content type): each listener renders errors in its API's shape."""


class KeyMiddleware:
    """Pure-ASGI check of ``Authorization`` on every HTTP request of one listener (health probes exempt)."""

    def __init__(
        self, app: ASGIApp, key: ApiKey, render: ErrorRenderer, exempt: frozenset[str] = _EXEMPT_PATHS
    ) -> None:
        self.app = app
        self.key = key
        self.render = render
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.key.value is None or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            self.key.check(header)
        except UnauthorizedError as exc:
            status, body, content_type = await self.render(scope, exc)
            await send({
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="triserve"'),
                ],
            })
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
