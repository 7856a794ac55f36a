"""Several gateway processes, one model registry: the primary's routing state, mirrored by the others.

Only the primary (process 0, :mod:`triserve_gateway.process`) serves the management API: it
registers, scales and unregisters versions, reconciles with the backends and decides where each
version is routed. The followers (processes 1..N-1) serve inference only and mirror what the
primary routes, through files in the run's registry directory:

- ``registry.json``: a snapshot of the primary's catalog, defaults, routes and placement, with a
  generation number; the primary rewrites it atomically (``os.replace``) whenever it changes
  (:class:`RegistryPublisher`: after each change the manager makes, and every ``interval_s`` for any
  other);
- ``ack-<index>``: the generation follower ``<index>`` has applied. A follower checks the snapshot
  every ``interval_s`` (one ``stat``), applies a new generation (:class:`RegistryFollower`), waits
  for its own requests on versions the snapshot dropped (up to the drain timeout), then acknowledges.

So every process serves a management change within ``2 * interval_s`` (0.1 s) plus the time to apply
it; a synchronous register, an unregister and a set-default answer only once every follower has
acknowledged it (:meth:`RegistryPublisher.settled`, to a deadline: a follower that does not
acknowledge in time is logged, the answer goes out anyway).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triserve_gateway.config import ModelRoute
from triserve_gateway.gateway import Absence
from triserve_gateway.models import ModelVersion
from triserve_gateway.periodic import Periodic
from triserve_gateway.process import ProcessRole

if TYPE_CHECKING:
    from triserve_gateway.manager import ModelManager

log = logging.getLogger(__name__)

SNAPSHOT = "registry.json"
INTERVAL_S = 0.05
"""How often the primary looks for unpublished changes and a follower for a new snapshot."""
SETTLE_TIMEOUT_S = 10.0
"""How long a management call waits for every follower to acknowledge a change."""
FIRST_SNAPSHOT_TIMEOUT_S = 60.0
"""How long a starting follower waits for the primary's first snapshot."""

Snapshot = dict[str, Any]


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (a reader sees the old file or the new, whole)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def snapshot(manager: ModelManager) -> Snapshot:
    """What the followers need of the primary's state: per model its route, default version and
    every version's placement (``placed``: backends holding it, None = unknown, every backend)."""
    gateway = manager.gateway
    catalog = gateway.catalog
    models: dict[str, Any] = {}
    for name in sorted(set(gateway.routed()) | set(catalog.names())):
        versions = {}
        for version in catalog.versions(name):
            placed = gateway.placement.get((name, version))
            absent = gateway.absent.get((name, version), {})
            versions[version] = {
                "placed": None if placed is None else sorted(placed),
                "absent": {b: [a.reason, a.permanent] for b, a in sorted(absent.items())},
            }
        models[name] = {
            "route": gateway.route(name).model_dump(mode="json") if gateway.is_routed(name) else None,
            "default": catalog.default_version(name),
            "versions": versions,
        }
    return {"settling": manager.reconciler.settling(), "models": models}


class RegistryPublisher:
    """The primary's side (module doc)."""

    def __init__(self, manager: ModelManager, role: ProcessRole, interval_s: float = INTERVAL_S) -> None:
        self.manager = manager
        self.directory = role.registry_dir
        self.followers = range(1, role.count)
        self.interval_s = interval_s
        self.generation = 0
        self._last = b""
        self._periodic = Periodic(self._publish, interval_s, "cannot publish the model registry", log)

    def changed(self) -> int:
        """Write a new snapshot if the state changed since the last one; the current generation."""
        state = json.dumps(snapshot(self.manager), sort_keys=True).encode()
        if state != self._last:
            self.generation += 1
            body = json.dumps({"generation": self.generation}).encode()[:-1] + b', "state": ' + state + b"}"
            write_atomic(self.directory / SNAPSHOT, body)
            self._last = state
        return self.generation

    def acknowledged(self, index: int) -> int:
        """The generation follower ``index`` last acknowledged (0 = none yet)."""
        try:
            return int((self.directory / f"ack-{index}").read_text())
        except (OSError, ValueError):
            return 0

    async def settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
        """Publish the current state and wait until every follower has applied it (False at the deadline)."""
        generation = self.changed()
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = [i for i in self.followers if self.acknowledged(i) < generation]
            if not lagging:
                return True
            if time.monotonic() >= deadline:
                log.warning("registry generation %d: gateway process(es) %s did not acknowledge within %.1fs",
                            generation, ", ".join(map(str, lagging)), timeout_s)
                return False
            await asyncio.sleep(0.005)

    async def start(self) -> None:
        """Publish now and then every ``interval_s``."""
        self.changed()
        self._periodic.start()

    async def close(self) -> None:
        """Stop the periodic task."""
        await self._periodic.stop()

    async def _publish(self) -> None:
        self.changed()  # a full disk must not stop the primary: the periodic task logs and tries again


class RegistryFollower:
    """A follower's side (module doc)."""

    def __init__(self, manager: ModelManager, role: ProcessRole, interval_s: float = INTERVAL_S) -> None:
        self.manager = manager
        self.role = role
        self.path = role.registry_dir / SNAPSHOT
        self.interval_s = interval_s
        self.generation = 0
        self.settling = True
        self._seen: tuple[int, int, int] | None = None
        self._periodic = Periodic(
            self._follow, interval_s, f"gateway process {role.index}: cannot apply the model registry", log
        )
        manager.gateway.settling = lambda: self.settling

    async def start(self, timeout_s: float = FIRST_SNAPSHOT_TIMEOUT_S) -> None:
        """Apply the primary's first snapshot (before this process serves), then follow it."""
        deadline = time.monotonic() + timeout_s
        while not await self.poll():
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no registry snapshot from the primary in {self.path} after {timeout_s}s")
            await asyncio.sleep(self.interval_s)
        self._periodic.start()

    async def close(self) -> None:
        """Stop the periodic task."""
        await self._periodic.stop()

    async def poll(self) -> bool:
        """Apply the snapshot if it is new; whether one has been applied so far."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.generation > 0
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._seen:
            self._seen = key
            data = json.loads(self.path.read_bytes())
            if data["generation"] > self.generation:
                removed = self.apply(data["state"])
                catalog = self.manager.gateway.catalog
                for name, version in removed:
                    await catalog.drained(name, version, self.manager.drain_timeout_s)
                    await self.manager.gateway.forget(name, version)
                self.generation = data["generation"]
                write_atomic(self.role.registry_dir / f"ack-{self.role.index}", str(self.generation).encode())
        return self.generation > 0

    def apply(self, state: Snapshot) -> list[tuple[str, str]]:
        """Make this process's catalog, defaults, routes and placement the snapshot's; the versions it
        stopped serving (to drain)."""
        gateway = self.manager.gateway
        catalog = gateway.catalog
        models: dict[str, Any] = state["models"]
        removed = []
        for name in catalog.names():
            for version in catalog.versions(name):
                if version not in models.get(name, {}).get("versions", {}):
                    catalog.remove(name, version)
                    gateway.place(name, version, frozenset(), {})
                    removed.append((name, version))
        for name in gateway.routed():
            if models.get(name, {}).get("route") is None:
                gateway.remove_route(name)
        for name, model in models.items():
            for version in model["versions"]:
                if version not in catalog.versions(name):
                    catalog.add(self._version(name, version))
            if model["default"] is not None:
                catalog.set_default(name, model["default"])
            if model["route"] is not None:
                route = ModelRoute.model_validate(model["route"])
                if not gateway.is_routed(name) or gateway.route(name) != route:
                    gateway.add_route(name, route)
            for version, where in model["versions"].items():
                absent = {b: Absence(reason, permanent) for b, (reason, permanent) in where["absent"].items()}
                if where["placed"] is None:
                    gateway.placement.pop((name, version), None)
                    gateway.absent[(name, version)] = absent
                else:
                    gateway.place(name, version, frozenset(where["placed"]), absent)
        self.settling = bool(state["settling"])
        return removed

    def _version(self, name: str, version: str) -> ModelVersion:
        manager = self.manager
        manifest = manager.store.get(name, version).manifest
        return ModelVersion.from_manifest(manifest, manager.max_pixels, manager.image_formats)

    async def _follow(self) -> bool:
        """One round: stop when the primary is gone, else apply a new snapshot."""
        if os.getppid() != self.role.primary_pid:
            log.error("gateway process %d: the primary (pid %d) is gone; stopping",
                      self.role.index, self.role.primary_pid)
            signal.raise_signal(signal.SIGTERM)
            return False
        try:
            await self.poll()
        except Exception:  # e.g. a version's manifest removed from the store: read again next round
            self._seen = None
            raise
        return True
