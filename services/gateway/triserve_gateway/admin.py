"""Model administration of each backend: what it holds, load, unload, scale — on its own connections.

- :class:`TorchServeAdmin`: TorchServe's real management API (``POST/PUT/DELETE /models``); archives
  are registered by file name, ``<model>.v<version>.mar``, as ``services/torchserve/start.sh`` links
  the model store's archives into TorchServe's model store folder.
- :class:`OipRepositoryAdmin`: the KServe v2 / Triton model repository extension of the ONNX and
  Paddle services (``POST /v2/repository/index``, ``.../models/{m}/load``, ``.../unload``); a
  version's instance count is its TorchServe worker count.

Admin calls use their own short-lived connections and a long timeout (a TorchServe worker takes
seconds to start), never the inference pool. Failures raise :class:`BackendAdminError` naming the
backend and what it answered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from triserve_common.errors import TriserveError
from triserve_gateway.config import BackendConfig

ADMIN_TIMEOUT_S = 180.0
"""Longest an admin call may take (TorchServe's synchronous register waits for its workers)."""


def torchserve_archive(model: str, version: str) -> str:
    """File name of a store archive in TorchServe's model store folder (see ``start.sh``)."""
    return f"{model}.v{version}.mar"


class BackendAdminError(TriserveError):
    """A backend refused or failed an admin call (502 unless it answered a more telling status)."""

    status_code = 502


@dataclass
class LoadOptions:
    """TorchServe registration options a client passed on (None = the archive's / service's own)."""

    batch_size: int | None = None
    max_batch_delay: int | None = None
    response_timeout: int | None = None


@dataclass
class HeldVersion:
    """A model version a backend holds, and its workers in TorchServe's describe shape."""

    model: str
    version: str
    ready: bool
    workers: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    """Backend-specific facts (TorchServe's describe entry, the repository index row)."""


class BackendAdmin(Protocol):
    """What the model manager needs from each backend."""

    name: str

    async def held(self) -> dict[tuple[str, str], HeldVersion]:
        """Every model version the backend holds now."""
        ...

    async def load(self, model: str, version: str, workers: int, options: LoadOptions) -> None:
        """Load one version with ``workers`` workers/instances (already held: fine)."""
        ...

    async def unload(self, model: str, version: str) -> None:
        """Unload one version (not held: fine)."""
        ...

    async def scale(self, model: str, version: str, min_workers: int, max_workers: int) -> None:
        """Run ``min_workers`` workers/instances of a held version (0: none)."""
        ...

    async def aclose(self) -> None: ...


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        for key in ("message", "error", "status"):
            if key in body:
                return str(body[key])
    return json.dumps(body)[:300]


class _Admin:
    def __init__(self, name: str, base_url: str, http: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url, timeout=ADMIN_TIMEOUT_S, trust_env=False
        )

    async def _call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise BackendAdminError(
                f"backend '{self.name}' ({self.base_url}) unreachable: {type(exc).__name__}: {exc}"
            ) from None
        if resp.status_code not in ok:
            status = resp.status_code if 400 <= resp.status_code < 500 else 502
            raise BackendAdminError(
                f"backend '{self.name}' answered {resp.status_code} to {method} {path}: {_message(resp)}",
                status,
            )
        return resp

    async def aclose(self) -> None:
        await self._http.aclose()


class TorchServeAdmin(_Admin):
    """TorchServe's management API (see module doc)."""

    async def held(self) -> dict[tuple[str, str], HeldVersion]:
        names: list[str] = []
        token: str | None = "0"
        while token is not None:
            query = {"limit": 100, "next_page_token": token}
            page = (await self._call("GET", "/models", params=query)).json()
            names += [m["modelName"] for m in page.get("models", [])]
            token = page.get("nextPageToken")
        held: dict[tuple[str, str], HeldVersion] = {}
        for name in names:
            resp = await self._call("GET", f"/models/{name}/all", ok=(200, 404))
            for entry in resp.json() if resp.status_code == 200 else []:
                workers = entry.get("workers") or []
                version = str(entry.get("modelVersion"))
                ready = any(w.get("status") == "READY" for w in workers)
                held[(name, version)] = HeldVersion(name, version, ready, workers, entry)
        return held

    async def load(self, model: str, version: str, workers: int, options: LoadOptions) -> None:
        params: dict[str, Any] = {
            "url": torchserve_archive(model, version),
            "model_name": model,
            "initial_workers": workers,
            "synchronous": "true",
        }
        for key in ("batch_size", "max_batch_delay", "response_timeout"):
            value = getattr(options, key)
            if value is not None:
                params[key] = value
        resp = await self._call("POST", "/models", ok=(200, 409), params=params)
        if resp.status_code == 409:  # already registered: make the worker count right
            await self.scale(model, version, workers, workers)

    async def unload(self, model: str, version: str) -> None:
        resp = await self._call("DELETE", f"/models/{model}/{version}", ok=(200, 403, 404))
        if resp.status_code == 403:  # TorchServe keeps its default version while others exist
            others = [v for (m, v) in await self.held() if m == model and v != version]
            await self._call("PUT", f"/models/{model}/{others[0]}/set-default")
            await self._call("DELETE", f"/models/{model}/{version}", ok=(200, 404))

    async def scale(self, model: str, version: str, min_workers: int, max_workers: int) -> None:
        params = {
            "min_worker": min_workers, "max_worker": max(max_workers, min_workers), "synchronous": "true"
        }
        await self._call("PUT", f"/models/{model}/{version}", params=params)


class OipRepositoryAdmin(_Admin):
    """The v2 model repository extension of a runtime service (see module doc)."""

    async def held(self) -> dict[tuple[str, str], HeldVersion]:
        rows = (await self._call("POST", "/v2/repository/index", json={"ready": True})).json()
        held: dict[tuple[str, str], HeldVersion] = {}
        for row in rows:
            name, version = row["name"], str(row.get("version"))
            instances = int(row.get("instances") or 1)
            started = row.get("loaded_at") or datetime.now(UTC).isoformat()
            workers = [
                {
                    "id": f"{self.name}-{i + 1}",
                    "startTime": started,
                    "status": "READY",
                    "memoryUsage": 0,
                    "pid": int(row.get("pid") or 0),
                    "gpu": bool(row.get("gpu", False)),
                    "gpuUsage": "N/A",
                }
                for i in range(instances)
            ]
            held[(name, version)] = HeldVersion(name, version, True, workers, row)
        return held

    async def load(self, model: str, version: str, workers: int, options: LoadOptions) -> None:
        parameters: dict[str, Any] = {"version": version}
        if workers > 0:
            parameters["instance_count"] = workers
        await self._call("POST", f"/v2/repository/models/{model}/load", json={"parameters": parameters})

    async def unload(self, model: str, version: str) -> None:
        await self._call("POST", f"/v2/repository/models/{model}/unload", ok=(200, 404),
                         json={"parameters": {"version": version}})

    async def scale(self, model: str, version: str, min_workers: int, max_workers: int) -> None:
        if min_workers <= 0:
            await self.unload(model, version)
        else:
            await self.load(model, version, min_workers, LoadOptions())


def make_admin(name: str, config: BackendConfig) -> BackendAdmin | None:
    """The admin client of a backend (None when it has no management endpoint to reach)."""
    if config.protocol == "oip-v2":
        return OipRepositoryAdmin(name, config.url)
    if config.management_url:
        return TorchServeAdmin(name, config.management_url)
    return None


def default_admins(backends: Mapping[str, BackendConfig]) -> dict[str, BackendAdmin]:
    """One admin client per backend that has one."""
    admins = {name: make_admin(name, cfg) for name, cfg in backends.items()}
    return {name: admin for name, admin in admins.items() if admin is not None}
