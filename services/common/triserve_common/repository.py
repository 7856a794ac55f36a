"""The model repository of a runtime service: several models and versions, loaded and unloaded at run time.

One :class:`ModelRepository` per service holds every loaded model version as a :class:`ServedModel`
(its :class:`~triserve_common.runtime.Runtime` and a worker pool of ``runtime.concurrency`` threads).
It backs the KServe v2 / Triton *model repository extension* (``POST /v2/repository/index``,
``.../models/{m}/load``, ``.../unload``) and the data plane's routing of ``name``/``version``:

- :meth:`ModelRepository.load` builds a runtime with the service's :data:`RuntimeFactory` in a worker
  thread (engines take seconds to build), then swaps it in; loading a loaded version again reloads it
  (e.g. with another instance count) and the old one drains as below;
- :meth:`ModelRepository.unload` takes the version out of routing at once (new requests get 404), waits
  until its in-flight requests have finished (bounded by ``drain_timeout_s``), then releases the engine;
- a request without a version gets the highest loaded version.

HTTP-free: the REST layer (:mod:`triserve_common.rest`) maps the calls onto routes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from triserve_common.errors import BadRequestError, ModelNotFoundError, TriserveError
from triserve_common.manifest import TensorSpec, list_versions, read_manifest, version_sort_key
from triserve_common.runtime import Runtime
from triserve_common.settings import RuntimeSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=RuntimeSettings)

RuntimeFactory = Callable[[str, str, "int | None"], Runtime]
"""``(name, version, instances)`` → a new, not yet loaded runtime (instances None = the service default)."""

ALL = "all"
NONE = "none"


class ModelState(StrEnum):
    """States of a model version in the repository index (Triton's names)."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class ServedModel:
    """One loaded model version: its runtime, worker pool and in-flight request count."""

    runtime: Runtime
    executor: ThreadPoolExecutor
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    input_specs: dict[str, TensorSpec] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    @classmethod
    def start(cls, runtime: Runtime) -> ServedModel:
        """Wrap a loaded runtime with a pool of ``runtime.concurrency`` worker threads."""
        executor = ThreadPoolExecutor(
            max_workers=max(1, runtime.concurrency), thread_name_prefix=f"{runtime.name}-{runtime.version}"
        )
        served = cls(
            runtime,
            executor,
            input_specs={spec.name: spec for spec in runtime.inputs},
            output_names=[spec.name for spec in runtime.outputs],
        )
        served.idle.set()
        return served

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def version(self) -> str:
        return self.runtime.version

    @property
    def instances(self) -> int:
        """Concurrent ``infer`` calls this version runs (its worker threads)."""
        return max(1, self.runtime.concurrency)

    def acquire(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self.idle.set()

    def close(self) -> None:
        """Wait for running batches, stop the pool and release the engine (blocking)."""
        self.executor.shutdown(wait=True)
        self.runtime.unload()


def parse_model_list(value: str | None) -> list[tuple[str, str | None]] | str:
    """``"all"`` / ``"none"`` / ``"mnist,fashion:1"`` → ``ALL``, ``[]`` or ``[(name, version or None)]``."""
    text = (value or "").strip()
    if text.lower() == ALL:
        return ALL
    if text.lower() in (NONE, ""):
        return []
    models: list[tuple[str, str | None]] = []
    for item in text.split(","):
        name, _, version = item.strip().partition(":")
        if not name:
            raise ValueError(f"empty model name in model list '{value}'")
        models.append((name, version or None))
    return models


class ModelRepository:
    """Every model version this service serves, and the store it loads them from (see module doc)."""

    def __init__(
        self,
        store: Path,
        artifact_kind: str,
        factory: RuntimeFactory,
        drain_timeout_s: float = 30.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.artifact_kind = artifact_kind
        self.factory = factory
        self.drain_timeout_s = drain_timeout_s
        self.on_change = on_change or (lambda: None)
        self._served: dict[str, dict[str, ServedModel]] = {}
        self._states: dict[tuple[str, str], tuple[ModelState, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def of(cls, runtimes: Iterable[Runtime], artifact_kind: str = "") -> ModelRepository:
        """A repository serving already loaded runtimes, with no store to load more from (tests)."""

        def no_factory(name: str, version: str, instances: int | None) -> Runtime:
            raise ModelNotFoundError(f"model '{name}' is not in this server's repository")

        repo = cls(Path("/nonexistent"), artifact_kind, no_factory)
        for runtime in runtimes:
            repo._install(ServedModel.start(runtime))
        return repo

    # ------------------------------------------------------------------ store

    def store_versions(self, name: str) -> list[str]:
        """Versions of ``name`` in the store this service serves: its artifact is there and the
        manifest's ``backends`` (when it lists them) include it."""
        return [v for v in list_versions(self.store, name) if not self.not_served_reason(name, v)]

    def not_served_reason(self, name: str, version: str) -> str:
        """Why this service does not serve a store version ("" when it does)."""
        try:
            manifest = read_manifest(self.store / name / version)
        except (OSError, ValueError) as exc:
            return f"the manifest of {name} version {version} cannot be read: {exc}"
        return manifest.not_served_reason(self.artifact_kind)

    def store_models(self) -> list[str]:
        """Model names in the store with at least one version this service can load."""
        if not self.store.is_dir():
            return []
        return sorted(p.name for p in self.store.iterdir() if p.is_dir() and self.store_versions(p.name))

    def resolve(self, name: str, version: str | None) -> str:
        """The store version to load: ``version`` if present, else the highest (404 naming the choice)."""
        versions = self.store_versions(name)
        if not versions:
            raise ModelNotFoundError(
                f"model '{name}' has no '{self.artifact_kind}' artifact in the model store "
                f"(models: {', '.join(self.store_models()) or 'none'})"
            )
        if version in (None, "", "latest"):
            return versions[-1]
        if version not in versions:
            why = ""
            if version in list_versions(self.store, name):
                why = f"; this '{self.artifact_kind}' service does not serve it: " + (
                    self.not_served_reason(name, version)
                )
            raise ModelNotFoundError(
                f"version '{version}' of model '{name}' not found (versions: {', '.join(versions)}{why})"
            )
        return version

    # ------------------------------------------------------------------ routing

    def loaded(self) -> list[ServedModel]:
        """Every loaded version, by name then version."""
        return [
            self._served[name][v]
            for name in sorted(self._served)
            for v in sorted(self._served[name], key=version_sort_key)
        ]

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The loaded ``version`` of ``name`` (highest loaded when None); 404 naming what is served."""
        by_version = self._served.get(name)
        if not by_version:
            served = ", ".join(sorted(self._served)) or "none"
            raise ModelNotFoundError(f"model '{name}' not found (models loaded: {served})")
        if version in (None, "", "latest"):
            return by_version[max(by_version, key=version_sort_key)]
        served_model = by_version.get(version) if version is not None else None
        if served_model is None:
            loaded = ", ".join(sorted(by_version, key=version_sort_key))
            raise ModelNotFoundError(
                f"version '{version}' of model '{name}' not found (versions loaded: {loaded})"
            )
        return served_model

    @contextmanager
    def use(self, name: str, version: str | None) -> Iterator[ServedModel]:
        """The served version, counted in flight until the block ends (so unload waits for it)."""
        served = self.get(name, version)
        served.acquire()
        try:
            yield served
        finally:
            served.release()

    # ------------------------------------------------------------------ index

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """``POST /v2/repository/index`` body: every version in the store or loaded, with its state."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for name in self.store_models():
            for version in self.store_versions(name):
                unloaded = {"state": ModelState.UNAVAILABLE.value, "reason": "unloaded"}
                rows[(name, version)] = {"name": name, "version": version, **unloaded}
        for (name, version), (state, reason) in self._states.items():
            rows[(name, version)] = {"name": name, "version": version, "state": state.value, "reason": reason}
        for served in self.loaded():
            rows[(served.name, served.version)] = {
                "name": served.name,
                "version": served.version,
                "state": ModelState.READY.value,
                "reason": "",
                "instances": served.instances,
                "loaded_at": served.loaded_at,
                "pid": os.getpid(),
            }
        ordered = sorted(rows.values(), key=lambda r: (r["name"], version_sort_key(r["version"])))
        return [r for r in ordered if r["state"] == ModelState.READY.value] if ready_only else ordered

    # ------------------------------------------------------------------ load / unload

    def load_sync(self, name: str, version: str | None, instances: int | None = None) -> ServedModel:
        """Load one version now (at start, before the event loop serves requests)."""
        resolved = self.resolve(name, version)
        served = self._build(name, resolved, instances)
        old = self._install(served)
        if old is not None:
            old.close()
        return served

    def load_startup(self, models: list[tuple[str, str | None]] | str) -> None:
        """Load the start set: :data:`ALL` (every version in the store), or ``[(name, version)]`` where
        a version of None means every version of that model in the store (``latest``: the highest)."""
        names = self.store_models() if models == ALL else []
        wanted: list[tuple[str, str | None]] = [(name, None) for name in names]
        if not isinstance(models, str):
            wanted = models
        for name, version in wanted:
            in_store = list_versions(self.store, name)
            versions = self.store_versions(name) if version is None else [version]
            if version is not None and version in in_store and (why := self.not_served_reason(name, version)):
                log.info("start set: %s version %s not loaded here: %s", name, version, why)
                continue
            if not versions and in_store:
                log.info("start set: no version of %s is served by this '%s' service", name,
                         self.artifact_kind)
                continue
            if not versions:
                self.resolve(name, None)  # 404 naming the models there are
            for v in versions:
                self.load_sync(name, v)

    async def load(self, name: str, version: str | None = None, instances: int | None = None) -> ServedModel:
        """Load (or reload) a version from the store; raises the error that made it fail."""
        if instances is not None and instances < 1:
            raise BadRequestError(f"instance_count must be at least 1, got {instances}")
        resolved = self.resolve(name, version)
        async with self._lock(name):
            self._states[(name, resolved)] = (ModelState.LOADING, "")
            try:
                served = await asyncio.to_thread(self._build, name, resolved, instances)
            except TriserveError as exc:
                self._states[(name, resolved)] = (ModelState.UNAVAILABLE, exc.message)
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self._states[(name, resolved)] = (ModelState.UNAVAILABLE, reason)
                raise TriserveError(f"failed to load '{name}' version {resolved}: {reason}", 400) from exc
            self._states.pop((name, resolved), None)
            old = self._install(served)
        if old is not None:
            await self._drain_and_close(old)
        log.info("loaded %s version %s (%d instances, engine %s)", name, resolved, served.instances,
                 served.runtime.engine)
        return served

    async def unload(self, name: str, version: str | None = None) -> list[str]:
        """Unload one version (None: all) once its requests in flight end; returns the versions unloaded."""
        async with self._lock(name):
            by_version = self._served.get(name, {})
            every = version in (None, "", ALL)
            targets = [v for v in by_version if every or v == version]
            removed = [by_version.pop(v) for v in targets]
            if not by_version:
                self._served.pop(name, None)
            for served in removed:
                self._states[(name, served.version)] = (ModelState.UNLOADING, "")
            self.on_change()
            await asyncio.gather(*(self._drain_and_close(s) for s in removed))
            for served in removed:
                self._states.pop((name, served.version), None)
        for served in removed:
            log.info("unloaded %s version %s", name, served.version)
        return [s.version for s in removed]

    async def close(self) -> None:
        """Unload everything (service shutdown: in-flight requests have finished)."""
        for name in list(self._served):
            await self.unload(name)

    # ------------------------------------------------------------------ internals

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _build(self, name: str, version: str, instances: int | None) -> ServedModel:
        runtime = self.factory(name, version, instances)
        runtime.load()
        return ServedModel.start(runtime)

    def _install(self, served: ServedModel) -> ServedModel | None:
        by_version = self._served.setdefault(served.name, {})
        old = by_version.get(served.version)
        by_version[served.version] = served
        self.on_change()
        return old

    async def _drain_and_close(self, served: ServedModel) -> None:
        try:
            await asyncio.wait_for(served.idle.wait(), timeout=self.drain_timeout_s)
        except TimeoutError:
            log.warning("%s version %s: %d requests still in flight after %.0fs; unloading anyway",
                        served.name, served.version, served.inflight, self.drain_timeout_s)
        await asyncio.to_thread(served.close)


def runtime_repository(
    settings: S,
    artifact_kind: str,
    make_runtime: Callable[[S], Runtime],
    instances_setting: str,
) -> ModelRepository:
    """A service's repository with its start set loaded (``settings.load_models``).

    Each version's runtime is ``make_runtime`` of a copy of ``settings`` naming that model version,
    with ``instances_setting`` (e.g. ONNX's ``workers``) set to the requested instance count.
    """

    def factory(name: str, version: str, instances: int | None) -> Runtime:
        update: dict[str, Any] = {"model_name": name, "model_version": version}
        if instances is not None:
            update[instances_setting] = instances
        return make_runtime(settings.model_copy(update=update))

    repository = ModelRepository(settings.model_store, artifact_kind, factory, settings.graceful_shutdown_s)
    try:
        models = settings.startup_models()
    except ValueError as exc:
        raise BadRequestError(f"load_models: {exc}") from None
    repository.load_startup(models)
    return repository
