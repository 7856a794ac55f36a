"""Which model versions the gateway serves, and their life on every backend (HTTP-free).

:class:`ModelManager` implements TorchServe's management semantics over all the backends at once:

- **register** a store version (see :mod:`triserve_gateway.store` for the ``url`` forms): every
  backend of the model's route that can run it (its ``artifact`` is in the manifest, and the
  manifest's ``backends`` list it when it has one) loads it —
  TorchServe through its management API, ONNX/Paddle through the v2 repository extension — and the
  version is routed to those that did. The first version of a model becomes its default.
- **unregister**: the version stops taking requests at once (404), the gateway waits for its
  requests in flight, then every backend unloads it. The default version cannot go while others
  remain (403), as in TorchServe.
- **scale**: TorchServe's workers and the runtime services' instances of a version (0 = none).
- **set default**: the version a request without one gets.

Models registered at start (``load_models``) are routed to a backend once it reports holding them;
every version is routed only to the backends whose latest report (every health-check interval) has it
ready (:mod:`triserve_gateway.reconcile`), so the gateway is ready once the backends are. The default
version is the highest, unless the model's route in ``routing.yaml`` sets ``default_version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from triserve_common.repository import ALL, parse_model_list
from triserve_gateway.admin import BackendAdmin, BackendAdminError
from triserve_gateway.config import BackendRef, BatchingConfig, ModelRoute
from triserve_gateway.gateway import Gateway
from triserve_gateway.models import ModelVersion
from triserve_gateway.reconcile import FAILED, LOADING, READY, UNLOADED, Reconciler, Registration, absences
from triserve_gateway.settings import DEFAULT_IMAGE_FORMATS
from triserve_gateway.store import ModelStore, StoreVersion
from triserve_gateway.torchserve_errors import (
    BadRequestException,
    ConflictStatusException,
    InternalServerException,
    InvalidModelVersionException,
    ModelNotFoundException,
    ModelVersionNotFoundException,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """A management call's HTTP status and TorchServe's ``status`` message."""

    status: int
    message: str


class ModelManager:
    """Registered model versions and their placement on the backends (see module doc)."""

    def __init__(
        self,
        gateway: Gateway,
        store: ModelStore,
        admins: Mapping[str, BackendAdmin],
        max_pixels: int,
        drain_timeout_s: float = 30.0,
        image_formats: Sequence[str] = DEFAULT_IMAGE_FORMATS,
        settle_timeout_s: float = 180.0,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.admins = dict(admins)
        self.max_pixels = max_pixels
        self.image_formats = tuple(image_formats)
        self.drain_timeout_s = drain_timeout_s
        self.registered: dict[str, dict[str, Registration]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconciler = Reconciler(self, settle_timeout_s)
        gateway.settling = self.reconciler.settling

    # ------------------------------------------------------------------ queries

    def registration(self, name: str, version: str | None) -> Registration:
        """The registered version (the default when None); TorchServe's 404s otherwise."""
        regs = self.registered.get(name)
        if not regs:
            raise ModelNotFoundException(f"Model not found: {name}")
        version = version or self.gateway.catalog.default_version(name)
        reg = regs.get(version or "")
        if reg is None:
            raise ModelVersionNotFoundException(f"Model version: {version} does not exist for model: {name}")
        return reg

    def eligible(self, name: str, store_version: StoreVersion) -> list[str]:
        """Backends of ``name``'s route (every backend if unrouted) that can run this version: its
        manifest has their artifact and, when it lists ``backends``, lists them."""
        route = self.gateway.routing.models.get(name)
        names = [ref.name for ref in route.backends] if route else list(self.gateway.routing.backends)
        manifest = store_version.manifest
        return [
            b for b in names
            if (kind := self.gateway.routing.backends[b].artifact) is None or manifest.serves_on(kind)
        ]

    def busy(self, name: str) -> bool:
        """Whether an admin call (register, scale, unregister) is changing ``name`` right now."""
        return self._lock(name).locked()

    # ------------------------------------------------------------------ start set

    def register_startup(self, models: str) -> None:
        """Register ``load_models`` (``all``, ``none``, ``mnist,fashion:1``) without calling any backend:
        each version is routed to a backend once its report (:meth:`reconcile`) says it holds it."""
        try:
            spec = parse_model_list(models)
        except ValueError as exc:
            raise BadRequestException(f"load_models: {exc}") from None
        if spec == ALL:
            wanted = [(n, v) for n in self.store.models() for v in self.store.versions(n)]
        else:
            assert not isinstance(spec, str)
            wanted = []
            for name, version in spec:
                versions = [version] if version else self.store.versions(name)
                if not versions:
                    raise ModelNotFoundException(f"load_models: model '{name}' is not in the model store")
                wanted += [(name, v) for v in versions]
        for name, version in wanted:
            store_version = self.store.get(name, version)
            backends = self.eligible(name, store_version)
            if not backends:
                log.warning("no backend can run %s version %s: not registered", name, version)
                continue
            reg = self._new_registration(store_version, f"{name}/{version}", None, None, None, None)
            reg.loaded_at_startup = True
            # routed to a backend once it reports holding it (one it cannot be asked: assumed)
            reg.state = {b: LOADING if b in self.admins else READY for b in backends}
            self._install(reg)
        for name in self.registered:  # at start: the route's default_version, else the highest
            route = self.gateway.routing.models.get(name)
            versions = self.gateway.catalog.versions(name)
            chosen = route.default_version if route is not None else None
            if chosen is not None and chosen not in versions:
                log.warning("%s: default_version %s is not registered (versions: %s); using %s",
                            name, chosen, ", ".join(versions), versions[-1])
                chosen = None
            self.gateway.catalog.set_default(name, chosen or versions[-1])

    # ------------------------------------------------------------------ register / unregister

    async def register(
        self,
        url: str | None,
        model_name: str | None = None,
        initial_workers: int | None = None,
        synchronous: bool = True,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        response_timeout: int | None = None,
    ) -> Answer:
        """TorchServe's ``POST /models`` (see module doc)."""
        if not url:
            raise BadRequestException("Parameter url is required.")
        name, version = self.store.resolve_url(url)
        if model_name and model_name != name:
            raise BadRequestException(
                f"model_name '{model_name}' differs from the model '{name}' that url '{url}' names: "
                "the gateway serves the store's models under their own names"
            )
        store_version = self.store.get(name, version)
        backends = self.eligible(name, store_version)
        if not backends:
            raise BadRequestException(
                f"no backend can run model '{name}' version {version} "
                f"(its artifacts: {', '.join(sorted(store_version.manifest.artifacts))})"
            )
        async with self._lock(name):
            if version in self.registered.get(name, {}):
                raise ConflictStatusException(
                    f"Model version {version} is already registered for model {name}"
                )
            reg = self._new_registration(store_version, url, initial_workers, batch_size, max_batch_delay,
                                         response_timeout)
            reg.state = dict.fromkeys(backends, LOADING if reg.min_workers > 0 else UNLOADED)
            self._install(reg)
        if reg.min_workers <= 0:
            return Answer(200, f'Model "{name}" Version: {version} registered with 0 initial workers. '
                               "Use scale workers API to add workers for the model.")
        if not synchronous:
            self._background(self._load_all(reg))
            return Answer(202, "Processing worker updates...")
        await self._load_all(reg)
        if not reg.placed():
            await self._drop(reg)
            raise InternalServerException(
                f"Failed to start workers for model {name} version: {version} "
                f"({'; '.join(reg.errors.values())})"
            )
        workers = reg.min_workers
        return Answer(200, f'Model "{name}" Version: {version} registered with {workers} initial workers')

    async def unregister(self, name: str, version: str | None, force_default: bool = False) -> str:
        """TorchServe's ``DELETE /models/{m}[/{v}]``: 404/403 as TorchServe (see module doc)."""
        reg = self.registration(name, version)
        default = self.gateway.catalog.default_version(name)
        if reg.version == default and len(self.registered[name]) > 1 and not force_default:
            raise InvalidModelVersionException(f"Cannot remove default version for model {name}")
        async with self._lock(name):
            if self.registered.get(name, {}).get(reg.version) is not reg:
                raise ModelVersionNotFoundException(
                    f"Model version: {reg.version} does not exist for model: {name}"
                )
            await self._drop(reg)
        return f'Model "{name}" unregistered'

    # ------------------------------------------------------------------ scale / default

    async def scale(
        self, name: str, version: str | None, min_workers: int, max_workers: int | None, synchronous: bool
    ) -> Answer:
        """TorchServe's ``PUT /models/{m}[/{v}]?min_worker&max_worker&synchronous``."""
        max_workers = min_workers if max_workers is None else max_workers
        if max_workers < min_workers:
            raise BadRequestException("max_worker cannot be less than min_worker.")
        if min_workers < 0:
            raise BadRequestException(f"min_worker must not be negative, got {min_workers}")
        reg = self.registration(name, version)
        reg.min_workers, reg.max_workers = min_workers, max_workers
        if not synchronous:
            self._background(self._scale_all(reg))
            return Answer(202, "Processing worker updates...")
        await self._scale_all(reg)
        if min_workers > 0 and not reg.placed():
            raise InternalServerException(f"Failed to start workers for model {name} version: {reg.version}")
        suffix = f", version: {version}" if version else ""
        return Answer(200, f"Workers scaled to {min_workers} for model: {name}{suffix}")

    def set_default(self, name: str, version: str) -> str:
        """TorchServe's ``PUT /models/{m}/{v}/set-default``."""
        if name not in self.registered:
            raise ModelNotFoundException(f"Model not found: {name}")
        if version not in self.registered[name]:
            raise ModelVersionNotFoundException(f"Model version {version} does not exist for model {name}")
        self.gateway.catalog.set_default(name, version)
        return f'Default version successfully updated for model "{name}" to "{version}"'

    # ------------------------------------------------------------------ reconciliation

    async def start(self, interval_s: float, first_timeout_s: float = 5.0) -> None:
        """The backends' first reports (at most ``first_timeout_s``), then reconcile every ``interval_s``."""
        await self.reconciler.start(interval_s, first_timeout_s)


    async def close(self) -> None:
        """Stop reconciling and background work; close the admin clients."""
        await self.reconciler.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(a.aclose() for a in self.admins.values()), return_exceptions=True)

    async def reconcile(self) -> None:
        """One reconciliation round (:meth:`triserve_gateway.reconcile.Reconciler.reconcile`)."""
        await self.reconciler.reconcile()

    # ------------------------------------------------------------------ internals

    def _new_registration(
        self, sv: StoreVersion, url: str, initial_workers: int | None, batch_size: int | None,
        max_batch_delay: int | None, response_timeout: int | None,
    ) -> Registration:
        archive = sv.archive
        if archive.min_workers > 0 and archive.max_workers >= archive.min_workers:
            # the archive's config wins, as in TorchServe
            min_w, max_w = archive.min_workers, archive.max_workers
        else:
            min_w = max_w = 1 if initial_workers is None else max(0, initial_workers)
        return Registration(
            store=sv,
            mv=ModelVersion.from_manifest(sv.manifest, self.max_pixels, self.image_formats),
            url=url,
            backends=self.eligible(sv.name, sv),
            min_workers=min_w,
            max_workers=max_w,
            batch_size=batch_size or archive.batch_size,
            max_batch_delay=archive.max_batch_delay if max_batch_delay is None else max_batch_delay,
            response_timeout=response_timeout or archive.response_timeout,
        )

    def _install(self, reg: Registration) -> None:
        """Add ``reg`` to the catalog, routing and placement (routable once a backend holds it)."""
        first = reg.name not in self.registered
        self.registered.setdefault(reg.name, {})[reg.version] = reg
        self.gateway.catalog.add(reg.mv)
        if first and not self.gateway.is_routed(reg.name):
            self.gateway.add_route(reg.name, self._route(reg))
        self.publish(reg)

    def _route(self, reg: Registration) -> ModelRoute:
        """The model's route in ``routing.yaml``, else every backend that can run one of its versions."""
        configured = self.gateway.routing.models.get(reg.name)
        if configured is not None:
            return configured
        names = set(reg.backends)
        for version in self.store.versions(reg.name):
            names.update(self.eligible(reg.name, self.store.get(reg.name, version)))
        batching = BatchingConfig(max_batch_size=max(1, reg.batch_size))
        backends = [BackendRef(name=b) for b in self.gateway.routing.backends if b in names]
        strategy = self.gateway.routing.default_strategy
        return ModelRoute(backends=backends, batching=batching, strategy=strategy)

    def publish(self, reg: Registration) -> None:
        """Route ``reg`` to the backends holding it, with the reason each other backend does not."""
        self.gateway.place(reg.name, reg.version, reg.placed(), absences(self, reg))

    async def load_on(self, reg: Registration, backend: str) -> None:
        """Load ``reg`` on one backend and record its state there."""
        await self._load_one(reg, backend)

    async def _drop(self, reg: Registration) -> None:
        """Stop routing ``reg`` at once, wait for its requests in flight, then unload it everywhere."""
        regs = self.registered.get(reg.name, {})
        regs.pop(reg.version, None)
        self.gateway.catalog.remove(reg.name, reg.version)
        self.gateway.place(reg.name, reg.version, frozenset(), {})
        if not regs:
            self.registered.pop(reg.name, None)
            self.gateway.remove_route(reg.name)
        if not await self.gateway.catalog.drained(reg.name, reg.version, self.drain_timeout_s):
            log.warning("%s version %s: requests still in flight after %.0fs; unloading anyway",
                        reg.name, reg.version, self.drain_timeout_s)
        await self.gateway.forget(reg.name, reg.version)
        await asyncio.gather(*(self._unload_one(reg, b) for b in reg.backends))

    async def _load_all(self, reg: Registration) -> None:
        async with self._lock(reg.name):
            await asyncio.gather(*(self._load_one(reg, b) for b in reg.backends))
            self.publish(reg)

    async def _load_one(self, reg: Registration, backend: str) -> None:
        await self._on_backend(reg, backend, READY,
                               lambda a: a.load(reg.name, reg.version, reg.min_workers, reg.options()))

    async def _unload_one(self, reg: Registration, backend: str) -> None:
        await self._on_backend(reg, backend, UNLOADED, lambda a: a.unload(reg.name, reg.version))

    async def _scale_all(self, reg: Registration) -> None:
        async with self._lock(reg.name):
            if reg.min_workers <= 0:  # out of routing first, then no workers
                reg.state = dict.fromkeys(reg.backends, UNLOADED)
                self.publish(reg)
            await asyncio.gather(*(
                self._on_backend(reg, b, READY if reg.min_workers > 0 else UNLOADED,
                                 lambda a: self._scale_call(a, reg))
                for b in reg.backends
            ))
            self.publish(reg)

    async def _scale_call(self, admin: BackendAdmin, reg: Registration) -> None:
        held = (reg.name, reg.version) in await admin.held()
        if held or reg.min_workers <= 0:
            await admin.scale(reg.name, reg.version, reg.min_workers, reg.max_workers)
        else:
            await admin.load(reg.name, reg.version, reg.min_workers, reg.options())

    async def _on_backend(
        self, reg: Registration, backend: str, success: str, call: Callable[[BackendAdmin], Awaitable[None]]
    ) -> None:
        """Run one admin call on ``backend`` and record the version's state there."""
        admin = self.admins.get(backend)
        if admin is None:  # nothing to ask (e.g. TorchServe without a management URL): assume it holds it
            reg.state[backend] = success
            return
        try:
            await call(admin)
        except BackendAdminError as exc:
            reg.state[backend] = FAILED if success == READY else UNLOADED
            reg.errors[backend] = exc.message
            log.warning("%s version %s on %s: %s", reg.name, reg.version, backend, exc.message)
            return
        finally:
            reg.changed_at = time.monotonic()
        reg.state[backend] = success
        reg.errors.pop(backend, None)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
