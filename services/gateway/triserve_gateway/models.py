"""What the gateway knows about each model: manifest-derived I/O, labels and preprocessing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from triserve_common.errors import ModelNotFoundError
from triserve_common.manifest import (
    Manifest,
    TensorSpec,
    list_versions,
    read_manifest,
    version_sort_key,
)
from triserve_gateway.preprocess import ImagePreprocessor
from triserve_gateway.settings import DEFAULT_IMAGE_FORMATS


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
    """Every version of every routed model; :meth:`get` resolves ``None`` to the newest."""

    def __init__(self, versions: Iterable[ModelVersion]) -> None:
        self._models: dict[str, dict[str, ModelVersion]] = {}
        for mv in versions:
            self._models.setdefault(mv.name, {})[mv.version] = mv
        self._latest = {
            name: by_version[sorted(by_version, key=version_sort_key)[-1]]
            for name, by_version in self._models.items()
        }

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

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The requested version (the newest when ``version`` is None); 404 naming what exists.

        As in TorchServe, ``latest`` is no alias: a client names a version that exists or none.
        """
        by_version = self._models.get(name)
        if by_version is None:
            raise ModelNotFoundError(
                f"model '{clip(name)}' is not served (models: {', '.join(self.names())})"
            )
        if version is None:
            return self._latest[name]
        mv = by_version.get(version)
        if mv is None:
            known = ", ".join(self.versions(name))
            hint = "; omit the version for the newest (no 'latest' alias)" if version == "latest" else ""
            raise ModelNotFoundError(
                f"version '{clip(version)}' of model '{name}' not found (versions: {known}{hint})"
            )
        return mv


def clip(text: str, limit: int = 64) -> str:
    """A client-supplied name shortened for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
