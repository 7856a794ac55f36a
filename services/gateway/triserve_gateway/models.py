"""What the gateway knows about each model: manifest-derived I/O, labels and preprocessing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triserve_common.errors import BadRequestError, ModelNotFoundError
from triserve_common.manifest import (
    Manifest,
    TensorSpec,
    list_versions,
    read_manifest,
    version_sort_key,
)
from triserve_gateway.preprocess import ImagePreprocessor
from triserve_gateway.settings import DEFAULT_IMAGE_FORMATS

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model as the gateway serves it (from its ``manifest.json``)."""

    name: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str]
    preprocessor: ImagePreprocessor

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, max_pixels: int, formats: Sequence[str] = DEFAULT_IMAGE_FORMATS
    ) -> ModelVersion:
        if not manifest.inputs or not manifest.outputs:
            raise ValueError(f"manifest of {manifest.name} v{manifest.version} lists no inputs/outputs")
        return cls(
            name=manifest.name,
            version=manifest.version,
            inputs=list(manifest.inputs),
            outputs=list(manifest.outputs),
            labels=list(manifest.labels),
            preprocessor=ImagePreprocessor(manifest.preprocessing, max_pixels, formats),
        )


class ModelCatalog:
    """Every registered version of every model, each model's default version, and the requests in
    flight per version (so that unregistering a version can wait for them).

    :meth:`get` resolves ``None`` to the model's default version (``latest`` is no alias): the highest version
    unless :meth:`set_default` chose another. :meth:`add` / :meth:`remove` change it at run time.
    """

    def __init__(self, versions: Iterable[ModelVersion]) -> None:
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._default: dict[str, str] = {}
        self._inflight: dict[tuple[str, str], int] = {}
        self._idle: dict[tuple[str, str], asyncio.Event] = {}
        for mv in versions:
            self._models.setdefault(mv.name, {})[mv.version] = mv
        for name in self._models:
            self._default[name] = self.versions(name)[-1]

    @classmethod
    def from_store(
        cls,
        store: Path,
        names: Iterable[str],
        max_pixels: int,
        formats: Sequence[str] = DEFAULT_IMAGE_FORMATS,
    ) -> ModelCatalog:
        """Read the manifests of ``names`` from the model store (404-style error if one is absent)."""
        found: list[ModelVersion] = []
        for name in names:
            versions = list_versions(store, name)
            if not versions:
                raise ModelNotFoundError(f"model '{name}' has no manifest in model store {store}")
            for version in versions:
                manifest = read_manifest(store / name / version)
                found.append(ModelVersion.from_manifest(manifest, max_pixels, formats))
        return cls(found)

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=version_sort_key)

    def default_version(self, name: str) -> str | None:
        """The version a request without one gets (None when the model has none)."""
        return self._default.get(name)

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The requested version (the default when ``version`` is None); 404 naming what exists.

        As in TorchServe, ``latest`` is no alias: a client names a version that exists or none.
        """
        by_version = self._models.get(name)
        if by_version is None:
            raise ModelNotFoundError(
                f"model '{clip(name)}' is not served (models: {', '.join(self.names()) or 'none'})"
            )
        if version is None:
            return by_version[self._default[name]]
        mv = by_version.get(version)
        if mv is None:
            known = ", ".join(self.versions(name))
            hint = "; omit the version for the default (no 'latest' alias)" if version == "latest" else ""
            raise ModelNotFoundError(
                f"version '{clip(version)}' of model '{name}' not found (versions: {known}{hint})"
            )
        return mv

    # ------------------------------------------------------------------ changes

    def add(self, mv: ModelVersion) -> None:
        """Serve ``mv``; the first version of a model becomes its default."""
        self._models.setdefault(mv.name, {})[mv.version] = mv
        self._default.setdefault(mv.name, mv.version)

    def set_default(self, name: str, version: str) -> None:
        """Make ``version`` (served) the default of ``name``."""
        self.get(name, version)
        self._default[name] = version

    def remove(self, name: str, version: str) -> None:
        """Stop serving one version (new requests get 404); the default moves to the highest left."""
        by_version = self._models.get(name, {})
        by_version.pop(version, None)
        if not by_version:
            self._models.pop(name, None)
            self._default.pop(name, None)
        elif self._default.get(name) == version:
            self._default[name] = self.versions(name)[-1]

    # ------------------------------------------------------------------ requests in flight

    @contextmanager
    def using(self, mv: ModelVersion) -> Iterator[None]:
        """Count one request on ``mv`` as in flight until the block ends."""
        key = (mv.name, mv.version)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._idle_event(key).clear()
        try:
            yield
        finally:
            left = self._inflight[key] - 1
            self._inflight[key] = left
            if left <= 0:
                self._inflight.pop(key, None)
                self._idle_event(key).set()

    def inflight(self, name: str, version: str) -> int:
        """Requests on that version not yet answered."""
        return self._inflight.get((name, version), 0)

    async def drained(self, name: str, version: str, timeout: float) -> bool:
        """Wait until no request is in flight on that version (False if ``timeout`` passed first)."""
        key = (name, version)
        if self._inflight.get(key, 0) <= 0:
            return True
        try:
            await asyncio.wait_for(self._idle_event(key).wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _idle_event(self, key: tuple[str, str]) -> asyncio.Event:
        event = self._idle.get(key)
        if event is None:
            event = self._idle[key] = asyncio.Event()
            event.set()
        return event


def clip(text: str, limit: int = 64) -> str:
    """A client-supplied name shortened for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_input(mv: ModelVersion, x: Array) -> None:
    """400 unless ``x`` is FP32 shaped like the model input."""
    expected = mv.input.shape
    ok = (
        x.dtype == np.float32
        and x.ndim == len(expected)
        and x.shape[0] > 0
        and all(e < 0 or e == d for e, d in zip(expected[1:], x.shape[1:], strict=True))
    )
    if not ok:
        raise BadRequestError(
            f"input '{mv.input.name}' must be FP32 {expected} with at least one row, "
            f"got {x.dtype} {list(x.shape)}"
        )
