"""Backend clients, one class per protocol, over pooled keep-alive ``httpx.AsyncClient``s.

- :class:`OipV2Client` (ONNX and Paddle services): OIP v2 ``/v2/models/{m}[/versions/{v}]/infer``
  with binary tensors both ways (``Inference-Header-Content-Length``).
- :class:`TorchServeClient`: ``POST /predictions/{m}[/{v}]`` with a ``.npy`` float32
  ``[N,1,28,28]`` body; the handler answers a ``.npy`` float32 logits ``[N,10]``.

Failures are classified for failover (:mod:`triserve_gateway.errors`): connection errors and
503/429 → :class:`BackendUnavailableError`, timeouts → ``BackendTimeoutError``, other 5xx/404
→ ``BackendError`` (all retryable); other 4xx → :class:`BackendRejectedError` (final).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any, Protocol

import httpx
import numpy as np

from triserve_common import codec
from triserve_gateway.config import BackendConfig
from triserve_gateway.errors import (
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
)

Array = np.ndarray[Any, Any]
REQUEST_ID_HEADER = "X-Request-Id"
_HEADER_LENGTH_KEY = codec.HEADER_LENGTH.lower()


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


def make_http_client(config: BackendConfig) -> httpx.AsyncClient:
    """A pooled keep-alive HTTP/1.1 client for one backend, on httpx's own transport.

    No transport-level retries (a failed call fails over in :mod:`triserve_gateway.gateway`),
    every pooled connection may stay alive, and no proxy / ``.netrc`` from the environment.
    """
    limits = httpx.Limits(
        max_connections=config.max_connections, max_keepalive_connections=config.max_connections
    )
    return httpx.AsyncClient(
        base_url=config.url,
        timeout=config.timeout_s,
        transport=httpx.AsyncHTTPTransport(retries=0, limits=limits, http1=True, http2=False),
        trust_env=False,
    )


def make_probe_client(config: BackendConfig) -> httpx.AsyncClient:
    """The backend's own small pool for health probes and management calls: never the inference
    pool, so probes neither wait for a free inference connection nor count its queueing."""
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    return httpx.AsyncClient(
        base_url=config.url,
        timeout=config.timeout_s,
        transport=httpx.AsyncHTTPTransport(retries=0, limits=limits, http1=True, http2=False),
        trust_env=False,
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


class _HttpBackend:
    """Shared plumbing: one pooled keep-alive ``httpx.AsyncClient`` per backend."""

    protocol = "?"

    def __init__(self, name: str, config: BackendConfig, http: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self.config = config
        self.url = config.url
        self._http = http if http is not None else make_http_client(config)
        # an injected client (tests) serves both; real ones probe on their own small pool
        self._probe_http = http if http is not None else make_probe_client(config)

    def _unavailable(self, exc: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"backend '{self.name}' ({self.url}) unreachable: {type(exc).__name__}: {exc}"
        )

    def _timed_out(self, timeout: float | None) -> BackendTimeoutError:
        return BackendTimeoutError(
            f"backend '{self.name}' did not answer within {timeout or self.config.timeout_s}s"
        )

    async def _post(self, path: str, headers: Mapping[str, str], body: bytes) -> httpx.Response:
        """POST ``body`` to ``path``; transport failures become retryable backend errors."""
        try:
            return await self._http.post(path, content=body, headers=headers)
        except httpx.TimeoutException:
            raise self._timed_out(None) from None
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None

    async def _get(self, url: str, timeout: float) -> httpx.Response:
        try:
            return await self._probe_http.get(url, timeout=timeout)
        except httpx.TimeoutException:
            raise self._timed_out(timeout) from None
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None

    def _check(self, status: int, content: bytes) -> None:
        if status == 200:
            return
        message = f"backend '{self.name}' answered {status}: {_error_message(content)}"
        if status in (429, 503):
            raise BackendUnavailableError(message)
        if status >= 500 or status == 404:
            raise BackendError(message)
        raise BackendRejectedError(message, status_code=status)

    async def _get_json(self, url: str, timeout: float) -> Any:
        resp = await self._get(url, timeout)
        self._check(resp.status_code, resp.content)
        return resp.json()

    async def _probe(self, path: str, timeout: float) -> bool:
        try:
            resp = await self._get(path, timeout)
        except (BackendUnavailableError, BackendTimeoutError):
            return False
        return resp.status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._probe_http is not self._http:
            await self._probe_http.aclose()


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
        self._check(resp.status_code, resp.content)
        try:
            decoded = codec.decode_response(
                resp.content, codec.parse_header_length(resp.headers.get(_HEADER_LENGTH_KEY))
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

    def __init__(self, name: str, config: BackendConfig, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(name, config, http)
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
        self._check(resp.status_code, resp.content)
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
        self._check(resp.status_code, resp.content)
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
