"""Backend clients, one class per protocol, over one pooled keep-alive ``aiohttp.ClientSession`` each.

- :class:`OipV2Client` (ONNX and Paddle services): OIP v2 ``/v2/models/{m}[/versions/{v}]/infer``
  with binary tensors both ways (``Inference-Header-Content-Length``).
- :class:`TorchServeClient`: ``POST /predictions/{m}[/{v}]`` with a ``.npy`` float32 body shaped
  like the model input (``[N, C, H, W]``); the handler answers a ``.npy`` of float32 logits ``[N, classes]``.

Transport: aiohttp's client (HTTP/1.1 keep-alive pool, C-accelerated parser). Measured on the 2-core
box, 3,000 sequential binary v2 calls to the ONNX service: httpx.AsyncClient 2.7-3.3 ms per call,
aiohttp 1.5 ms per call, service time included (BENCHMARKS.md, issue 12). The session is created on
first use, inside the running event loop (aiohttp requires one).

Failures are classified for failover (:mod:`triserve_gateway.errors`): connection errors and
503/429 → :class:`BackendUnavailableError`, timeouts → ``BackendTimeoutError``, other 5xx →
``BackendError`` (all retryable, counted by the breaker); 404 → :class:`BackendNotServingError`
(the backend does not hold that model version: tried elsewhere, not counted, and the version comes off
that backend until it reports holding it again); other 4xx → :class:`BackendRejectedError` (final, not
counted).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
import numpy as np
from yarl import URL

from triserve_common import codec
from triserve_gateway.config import BackendConfig
from triserve_gateway.errors import (
    BackendError,
    BackendNotServingError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
)

Array = np.ndarray[Any, Any]
REQUEST_ID_HEADER = "X-Request-Id"


class BackendClient(Protocol):
    """What the gateway needs from a backend."""

    name: str
    protocol: str
    url: str

    async def infer(
        self, model: str, version: str | None, x: Array, request_id: str | None,
        input_name: str = "input", output_name: str = "logits",
    ) -> Array:
        """Run a batch ``x``; return the output tensor (first axis = rows of ``x``)."""
        ...

    async def health(self, timeout: float = 1.0) -> bool:
        """Whether the backend answers its readiness probe."""
        ...

    async def describe(self, model: str, timeout: float = 1.0) -> dict[str, Any]:
        """What the backend says about ``model``: at least ``version`` and ``engine`` when known."""
        ...

    async def aclose(self) -> None: ...


def make_session(config: BackendConfig, max_connections: int | None = None) -> aiohttp.ClientSession:
    """A pooled keep-alive HTTP/1.1 session for one backend (call inside the running event loop).

    No transport-level retries (a failed call fails over in :mod:`triserve_gateway.gateway`), up to
    ``max_connections`` pooled connections (the config's unless given), the backend's timeout on every
    call, no proxy or ``.netrc`` from the environment, no compression negotiated (tensors do not
    compress).
    """
    limit = config.max_connections if max_connections is None else max_connections
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=config.timeout_s),
        trust_env=False,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def _error_message(content: bytes) -> str:
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return content[:200].decode(errors="replace")
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if key in body:
                return str(body[key])
    return json.dumps(body)[:200]


class Reply:
    """A backend's answer, read in full: status, headers (case-insensitive) and body."""

    __slots__ = ("content", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status = status
        self.headers = headers
        self.content = content


class _HttpBackend:
    """Shared plumbing: one pooled keep-alive ``aiohttp.ClientSession`` per backend for inference,
    a second small one for probes and management calls."""

    protocol = "?"

    def __init__(
        self, name: str, config: BackendConfig, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.url = config.url.rstrip("/")
        self._session = session
        self._injected = session is not None
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._urls: dict[str, URL] = {}
        self._probe_session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session, created on first use (inside the event loop)."""
        if self._session is None or self._session.closed:
            self._session = make_session(self.config)
        return self._session

    @property
    def probe_session(self) -> aiohttp.ClientSession:
        """The backend's own small pool for health probes and management calls, never the inference
        pool: probes neither wait for a free inference connection nor count its queueing (an injected
        session — tests — serves both)."""
        if self._injected and self._session is not None:
            return self._session
        if self._probe_session is None or self._probe_session.closed:
            self._probe_session = make_session(self.config, max_connections=2)
        return self._probe_session

    def _url(self, path_or_url: str) -> URL:
        """``path_or_url`` (a path under :attr:`url`, or an absolute URL) parsed once and cached."""
        url = self._urls.get(path_or_url)
        if url is None:
            absolute = path_or_url if "://" in path_or_url else self.url + path_or_url
            url = self._urls[path_or_url] = URL(absolute)
            if len(self._urls) > 1024:  # bounded: versions and models are few, but never grow forever
                self._urls.clear()
        return url

    def _unavailable(self, exc: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"backend '{self.name}' ({self.url}) unreachable: {type(exc).__name__}: {exc}"
        )

    def _timed_out(self, timeout: float | None) -> BackendTimeoutError:
        return BackendTimeoutError(
            f"backend '{self.name}' did not answer within {timeout or self.config.timeout_s}s"
        )

    async def _request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes | None = None,
        timeout: float | None = None, session: aiohttp.ClientSession | None = None,
    ) -> Reply:
        """One exchange, body read in full; transport failures become retryable backend errors."""
        # (aiohttp reads ``timeout=None`` as "no timeout": always pass one.)
        limit = self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        try:
            async with (session or self.session).request(
                method, self._url(path), data=body, headers=headers, timeout=limit
            ) as resp:
                return Reply(resp.status, resp.headers, await resp.read())
        except TimeoutError:
            raise self._timed_out(timeout) from None
        except aiohttp.ClientError as exc:
            raise self._unavailable(exc) from None

    async def _post(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """POST ``body`` to ``path`` (see :meth:`_request`)."""
        return await self._request("POST", path, headers, body)

    async def _get(self, url: str, timeout: float) -> Reply:
        return await self._request("GET", url, timeout=timeout, session=self.probe_session)

    def _check(self, status: int, content: bytes) -> None:
        if status == 200:
            return
        message = f"backend '{self.name}' answered {status}: {_error_message(content)}"
        if status in (429, 503):
            raise BackendUnavailableError(message)
        if status >= 500:
            raise BackendError(message)
        if status == 404:
            raise BackendNotServingError(message, status_code=404)
        raise BackendRejectedError(message, status_code=status)

    async def _get_json(self, url: str, timeout: float) -> Any:
        resp = await self._get(url, timeout)
        self._check(resp.status, resp.content)
        try:
            return json.loads(resp.content)
        except ValueError as exc:
            raise BackendError(f"backend '{self.name}' answered invalid JSON: {exc}") from None

    async def _probe(self, path: str, timeout: float) -> bool:
        try:
            resp = await self._get(path, timeout)
        except (BackendUnavailableError, BackendTimeoutError):
            return False
        return resp.status == 200

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._probe_session is not None:
            await self._probe_session.close()


class OipV2Client(_HttpBackend):
    """OIP v2 REST client with binary tensors (ONNX and Paddle services)."""

    protocol = "oip-v2"

    async def infer(
        self, model: str, version: str | None, x: Array, request_id: str | None,
        input_name: str = "input", output_name: str = "logits",
    ) -> Array:
        body, headers = codec.encode_request({input_name: x}, outputs=[output_name], request_id=request_id)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        prefix = f"/v2/models/{model}" if version is None else f"/v2/models/{model}/versions/{version}"
        resp = await self._post(prefix + "/infer", headers, body)
        self._check(resp.status, resp.content)
        try:
            decoded = codec.decode_response(
                resp.content, codec.parse_header_length(resp.headers.get(codec.HEADER_LENGTH))
            )
        except Exception as exc:
            raise BackendError(f"backend '{self.name}' sent an unreadable response: {exc}") from None
        out = decoded.outputs.get(output_name)
        if out is None:
            raise BackendError(
                f"backend '{self.name}' answered without output '{output_name}' "
                f"(got: {', '.join(decoded.outputs) or 'none'})"
            )
        return out

    async def health(self, timeout: float = 1.0) -> bool:
        return await self._probe("/v2/health/ready", timeout)

    async def describe(self, model: str, timeout: float = 1.0) -> dict[str, Any]:
        meta = await self._get_json(f"/v2/models/{model}", timeout)
        params = meta.get("parameters") or {}
        versions = meta.get("versions") or []
        return {
            "version": versions[-1] if versions else params.get("version"),
            "engine": params.get("engine") or meta.get("platform"),
            "platform": meta.get("platform"),
        }


class TorchServeClient(_HttpBackend):
    """TorchServe inference API client exchanging ``.npy`` tensors with our handler."""

    protocol = "torchserve"

    def __init__(
        self, name: str, config: BackendConfig, session: aiohttp.ClientSession | None = None
    ) -> None:
        super().__init__(name, config, session)
        self.management_url = config.management_url

    async def infer(
        self, model: str, version: str | None, x: Array, request_id: str | None,
        input_name: str = "input", output_name: str = "logits",
    ) -> Array:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(x, dtype="<f4"), allow_pickle=False)
        headers = {"Content-Type": "application/octet-stream"}
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        path = f"/predictions/{model}" if version is None else f"/predictions/{model}/{version}"
        resp = await self._post(path, headers, buf.getvalue())
        self._check(resp.status, resp.content)
        try:
            out: Array = np.load(io.BytesIO(resp.content), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BackendError(f"backend '{self.name}' did not answer a .npy tensor: {exc}") from None
        return out

    async def explain(
        self, model: str, version: str | None, x: Array, request_id: str | None, headers: Mapping[str, str]
    ) -> Any:
        """POST ``x`` as ``.npy`` to TorchServe's ``/explanations``; the handler's JSON answer."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(x, dtype="<f4"), allow_pickle=False)
        sent = {"Content-Type": "application/octet-stream", **headers}
        if request_id:
            sent[REQUEST_ID_HEADER] = request_id
        path = f"/explanations/{model}" if version is None else f"/explanations/{model}/{version}"
        resp = await self._post(path, sent, buf.getvalue())
        self._check(resp.status, resp.content)
        try:
            return json.loads(resp.content)
        except ValueError as exc:
            raise BackendError(f"backend '{self.name}' did not answer JSON explanations: {exc}") from None

    async def health(self, timeout: float = 1.0) -> bool:
        return await self._probe("/ping", timeout)

    async def describe(self, model: str, timeout: float = 1.0) -> dict[str, Any]:
        if not self.management_url:
            return {"version": None, "engine": "torchserve"}
        info = await self._get_json(f"{self.management_url}/models/{model}", timeout)
        entry = info[0] if isinstance(info, list) and info else {}
        workers = entry.get("workers") or []
        return {
            "version": entry.get("modelVersion"),
            "engine": f"torchserve ({entry.get('runtime', 'python')})",
            "workers": len(workers),
            "workers_ready": sum(1 for w in workers if w.get("status") == "READY"),
        }


def make_backend_client(name: str, config: BackendConfig) -> BackendClient:
    """The client class for ``config.protocol``."""
    if config.protocol == "oip-v2":
        return OipV2Client(name, config)
    return TorchServeClient(name, config)
