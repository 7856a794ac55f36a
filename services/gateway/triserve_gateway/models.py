"""What the gateway knows about each model: manifest-derived I/O, labels and preprocessing."""

from __future__ import annotations

from collections.abc import Iterable
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
    def from_manifest(cls, manifest: Manifest, max_pixels: int) -> ModelVersion:
        if not manifest.inputs or not manifest.outputs:
            raise ValueError(f"manifest of {manifest.name} v{manifest.version} lists no inputs/outputs")
        return cls(
            name=manifest.name,
            version=manifest.version,
            inputs=list(manifest.inputs),
            outputs=list(manifest.outputs),
            labels=list(manifest.labels),
            preprocessor=ImagePreprocessor(manifest.preprocessing, max_pixels),
        )


class ModelCatalog:
    """Every version of every routed model; :meth:`get` resolves ``None``/``latest`` to the newest."""

    def __init__(self, versions: Iterable[ModelVersion]) -> None:
        self._models: dict[str, dict[str, ModelVersion]] = {}
        for mv in versions:
            self._models.setdefault(mv.name, {})[mv.version] = mv
        self._latest = {
            name: by_version[sorted(by_version, key=version_sort_key)[-1]]
            for name, by_version in self._models.items()
        }

    @classmethod
    def from_store(cls, store: Path, names: Iterable[str], max_pixels: int) -> ModelCatalog:
        """Read the manifests of ``names`` from the model store (404-style error if one is absent)."""
        found: list[ModelVersion] = []
        for name in names:
            versions = list_versions(store, name)
            if not versions:
                raise ModelNotFoundError(f"model '{name}' has no manifest in model store {store}")
            for version in versions:
                found.append(ModelVersion.from_manifest(read_manifest(store / name / version), max_pixels))
        return cls(found)

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=version_sort_key)

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The requested version (newest when ``version`` is None, "" or "latest"); 404 otherwise."""
        if version in (None, "", "latest"):
            latest = self._latest.get(name)
            if latest is None:
                raise ModelNotFoundError(f"model '{name}' is not served (models: {', '.join(self.names())})")
            return latest
        by_version = self._models.get(name)
        if by_version is None:
            raise ModelNotFoundError(f"model '{name}' is not served (models: {', '.join(self.names())})")
        mv = by_version.get(version) if version is not None else None
        if mv is None:
            known = ", ".join(self.versions(name))
            raise ModelNotFoundError(f"version '{version}' of model '{name}' not found (versions: {known})")
        return mv


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
