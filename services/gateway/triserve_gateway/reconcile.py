"""The gateway's catalog follows what the backends report they serve (HTTP-free).

Every health-check interval :class:`Reconciler` asks each healthy backend what it holds (the v2
repository index of the ONNX and Paddle services, TorchServe's ``GET /models`` + describe) and
routes each registered version only to the backends that report it ready:

- held and ready → ``READY`` (routed there);
- held, workers still starting → ``LOADING`` (not routed yet);
- not held → loaded when the backend has just (re)appeared or lost a version it held (``LOADING``,
  then ``READY`` or ``FAILED`` with the backend's error); a version that failed to load stays off
  that backend until it reappears.

Versions registered at start wait in ``LOADING`` for the first report, so nothing is routed on
assumption and the gateway reports ready once the backends hold the models.

A version an admin call (register, scale, unregister) is changing is left alone for that round.
Backends that cannot serve a version at all (its manifest has no artifact for them, or lists other
backends) are never asked to load it; their reason shows when a client forces one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from triserve_gateway.admin import BackendAdmin, BackendAdminError, HeldVersion, LoadOptions
from triserve_gateway.gateway import Absence
from triserve_gateway.models import ModelVersion
from triserve_gateway.periodic import Periodic
from triserve_gateway.store import StoreVersion

if TYPE_CHECKING:
    from triserve_gateway.manager import ModelManager

log = logging.getLogger(__name__)

READY, LOADING, FAILED, UNLOADED, UNAVAILABLE = "READY", "LOADING", "FAILED", "UNLOADED", "UNAVAILABLE"
"""States of a registered version on one backend."""


@dataclass
class Registration:
    """One registered model version: its settings and its state on each backend that can run it."""

    store: StoreVersion
    mv: ModelVersion
    url: str
    backends: list[str]
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay: int
    response_timeout: int
    loaded_at_startup: bool = False
    state: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    changed_at: float = 0.0
    """When an admin call last changed a state (monotonic): older backend reports do not apply."""

    @classmethod
    def of(
        cls, sv: StoreVersion, mv: ModelVersion, url: str, backends: list[str], initial_workers: int | None,
        batch_size: int | None, max_batch_delay: int | None, response_timeout: int | None,
    ) -> Registration:
        """A new registration of a store version: the archive's worker config wins, as in TorchServe."""
        archive = sv.archive
        if archive.min_workers > 0 and archive.max_workers >= archive.min_workers:
            min_w, max_w = archive.min_workers, archive.max_workers
        else:
            min_w = max_w = 1 if initial_workers is None else max(0, initial_workers)
        return cls(
            store=sv, mv=mv, url=url, backends=backends, min_workers=min_w, max_workers=max_w,
            batch_size=batch_size or archive.batch_size,
            max_batch_delay=archive.max_batch_delay if max_batch_delay is None else max_batch_delay,
            response_timeout=response_timeout or archive.response_timeout,
        )

    @property
    def name(self) -> str:
        return self.mv.name

    @property
    def version(self) -> str:
        return self.mv.version

    def placed(self) -> frozenset[str]:
        """Backends holding this version, ready to serve it."""
        return frozenset(b for b, s in self.state.items() if s == READY)

    def options(self) -> LoadOptions:
        return LoadOptions(self.batch_size, self.max_batch_delay, self.response_timeout)


def absences(manager: ModelManager, reg: Registration) -> dict[str, Absence]:
    """Why each backend of ``reg``'s model route that is not ``READY`` does not serve it."""
    gateway = manager.gateway
    if not gateway.is_routed(reg.name):
        return {}
    out: dict[str, Absence] = {}
    for ref in gateway.route(reg.name).backends:
        backend = ref.name
        if reg.state.get(backend) == READY:
            continue
        if backend not in reg.backends:
            kind = gateway.routing.backends[backend].artifact
            why = reg.store.manifest.not_served_reason(kind) if kind else ""
            out[backend] = Absence(why or "not a backend this version is registered on", permanent=True)
            continue
        state = reg.state.get(backend, UNLOADED)
        error = reg.errors.get(backend)
        detail = {
            LOADING: "it is loading it",
            UNLOADED: "it has no workers for it (scaled to 0)",
            UNAVAILABLE: "it does not report holding it",
            FAILED: "it failed to load it",
        }.get(state, state)
        out[backend] = Absence(f"{detail}: {error}" if error else detail)
    return out


class Reconciler:
    """Keeps each registration's per-backend state equal to what the backends report (see module doc)."""

    def __init__(self, manager: ModelManager, settle_timeout_s: float = 180.0) -> None:
        self.manager = manager
        self.settle_timeout_s = settle_timeout_s
        self._synced: set[str] = set()
        self._periodic: Periodic | None = None
        self._started_at: float | None = None
        self._settled = False

    async def start(self, interval_s: float, first_timeout_s: float) -> None:
        """Take every backend's first report (at most ``first_timeout_s``; nothing is loaded yet, so the
        gateway starts routing what is held at once), then reconcile every ``interval_s``."""
        self._started_at = time.monotonic()
        reports = (self._backend(b, a, fresh=False, may_load=False) for b, a in self.manager.admins.items()
                   if b in self.manager.gateway.backends)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*reports, return_exceptions=True), first_timeout_s)
        self._periodic = Periodic(
            self.reconcile, interval_s, "reconciliation round failed", log, first_now=True
        )
        self._periodic.start()

    def settling(self) -> bool:
        """Whether a backend has not reported a version of the start set ready yet (the gateway is not
        ready until then: ``make up`` returns once every backend serves what it loads; backends start
        side by side with the gateway and TorchServe fails its probe while its workers start). Only
        after :meth:`start`, once (settled stays settled), and ``settle_timeout_s`` at most (a backend
        down at the start delays readiness by that much)."""
        if self._settled or self._started_at is None:
            return False
        if time.monotonic() - self._started_at > self.settle_timeout_s:
            log.warning("start set not loaded everywhere after %.0fs: ready anyway", self.settle_timeout_s)
            self._settled = True
            return False
        for regs in self.manager.registered.values():
            for reg in regs.values():
                if reg.loaded_at_startup and LOADING in reg.state.values():
                    return True
        self._settled = True
        return False

    async def stop(self) -> None:
        """Stop reconciling."""
        if self._periodic is not None:
            await self._periodic.stop()

    async def reconcile(self) -> None:
        """One round over every healthy backend with an admin client, concurrently (a slow load on one
        backend does not hold up the others' reports; see module doc)."""
        await asyncio.gather(*(self._one(b, a) for b, a in self.manager.admins.items()))

    async def _one(self, backend: str, admin: BackendAdmin) -> None:
        state = self.manager.gateway.backends.get(backend)
        if state is None:
            return
        if not state.healthy:
            # not routed to anyway; its report still keeps the states current (TorchServe fails its
            # probe while workers start, yet answers what it holds) — nothing is loaded on it
            self._synced.discard(backend)
            with contextlib.suppress(BackendAdminError):
                await self._backend(backend, admin, fresh=False, may_load=False)
            return
        fresh = backend not in self._synced
        try:
            await self._backend(backend, admin, fresh)
        except BackendAdminError as exc:
            (log.warning if fresh else log.debug)("cannot reconcile backend %s: %s", backend, exc.message)
            return
        self._synced.add(backend)

    async def _backend(self, backend: str, admin: BackendAdmin, fresh: bool, may_load: bool = True) -> None:
        asked = time.monotonic()
        held = await admin.held()
        for regs in list(self.manager.registered.values()):
            for reg in list(regs.values()):
                if backend not in reg.backends or reg.min_workers <= 0:
                    continue
                if reg.changed_at > asked or self.manager.busy(reg.name):
                    continue  # an admin call is changing it: the next round sees the result
                await self._apply(reg, backend, held.get((reg.name, reg.version)), fresh, may_load)
                self.manager.publish(reg)

    async def _apply(
        self, reg: Registration, backend: str, report: HeldVersion | None, fresh: bool, may_load: bool
    ) -> None:
        """Set ``reg``'s state on ``backend`` from its report; load it when it should be there and is not."""
        before = reg.state.get(backend)
        if report is not None:
            reg.state[backend] = READY if report.ready else LOADING
            if report.ready:
                reg.errors.pop(backend, None)
            return
        if not may_load:
            return
        if fresh or before in (READY, LOADING):
            log.info("backend %s lacks %s version %s: loading it", backend, reg.name, reg.version)
            reg.state[backend] = LOADING
            self.manager.publish(reg)
            await self.manager.load_on(reg, backend)
            return
        if before != FAILED:
            reg.state[backend] = UNAVAILABLE
