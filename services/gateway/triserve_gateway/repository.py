"""The KServe v2 / Triton model repository extension on the gateway's management port.

The repository is the model store; "loaded" means registered with the gateway (and held by the
backends that can run it), so:

- ``index``: every version in the store that some backend can run — ``READY`` when registered and
  held by at least one backend, ``LOADING`` while backends load it, else ``UNAVAILABLE`` with why;
- ``load {"parameters": {"version", "instance_count"}}``: registers the version (the highest when
  none is named) on every backend that can run it, synchronously; loading a registered version again
  reloads it where a backend lacks it, and applies ``instance_count`` (workers) when given;
- ``unload {"parameters": {"version"}}``: unregisters that version, or every version of the model
  (the default one last) — unlike TorchServe's ``DELETE``, unloading the default version is allowed
  and the highest remaining version becomes the default.
"""

from __future__ import annotations

from typing import Any

from triserve_common.errors import ModelNotFoundError
from triserve_common.v2 import LoadParameters, UnloadParameters
from triserve_gateway.manager import ModelManager
from triserve_gateway.reconcile import LOADING, READY


class GatewayRepository:
    """:class:`~triserve_common.repository_api.RepositoryBackend` over the :class:`ModelManager`."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    async def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        rows = []
        store = self.manager.store
        for name in store.models():
            for version in store.versions(name):
                reg = self.manager.registered.get(name, {}).get(version)
                if reg is None:
                    if not self.manager.eligible(name, store.get(name, version)):
                        continue
                    rows.append({"name": name, "version": version, "state": "UNAVAILABLE",
                                 "reason": "unloaded"})
                    continue
                states = set(reg.state.values())
                if READY in states:
                    state, reason = READY, ""
                elif LOADING in states:
                    state, reason = LOADING, ""
                else:
                    state = "UNAVAILABLE"
                    reason = "; ".join(reg.errors.values()) or "no backend holds it (0 workers)"
                rows.append({"name": name, "version": version, "state": state, "reason": reason})
        return [r for r in rows if r["state"] == READY] if ready_only else rows

    async def repository_load(self, name: str, params: LoadParameters) -> None:
        store = self.manager.store
        versions = store.versions(name)
        if not versions:
            raise ModelNotFoundError(f"model '{name}' is not in the model store "
                                     f"(models: {', '.join(store.models()) or 'none'})")
        version = params.version or versions[-1]
        if version not in versions:
            raise ModelNotFoundError(f"version '{version}' of model '{name}' not found "
                                     f"(versions: {', '.join(versions)})")
        reg = self.manager.registered.get(name, {}).get(version)
        if reg is None:
            await self.manager.register(f"{name}/{version}", initial_workers=params.instance_count)
            reg = self.manager.registered[name][version]
            if params.instance_count is None or params.instance_count == reg.min_workers:
                return
        workers = params.instance_count or max(1, reg.min_workers)
        await self.manager.scale(name, version, workers, max(workers, reg.max_workers), synchronous=True)

    async def repository_unload(self, name: str, params: UnloadParameters) -> None:
        registered = self.manager.registered.get(name)
        if not registered:
            raise ModelNotFoundError(f"model '{name}' is not loaded "
                                     f"(models: {', '.join(sorted(self.manager.registered)) or 'none'})")
        if params.version is not None:
            if params.version not in registered:
                raise ModelNotFoundError(f"version '{params.version}' of model '{name}' is not loaded "
                                         f"(versions: {', '.join(registered)})")
            await self.manager.unregister(name, params.version, force_default=True)
            return
        default = self.manager.gateway.catalog.default_version(name)
        for version in sorted(registered, key=lambda v: v == default):
            await self.manager.unregister(name, version, force_default=True)
