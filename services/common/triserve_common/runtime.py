"""The ``Runtime`` contract: one loaded model version behind the shared OIP v2 data plane.

Shape borrowed from MLServer's ``MLModel``: :meth:`Runtime.load` once, then :meth:`Runtime.infer`
on whole batches. ``infer`` is **synchronous** and **thread-safe**: the data plane calls it from a
worker thread pool of :attr:`Runtime.concurrency` threads, so an engine that releases the GIL
(onnxruntime, Paddle Inference) overlaps requests without blocking the event loop.
Inputs arrive already validated against :attr:`Runtime.inputs` (name, datatype, shape), and may be
read-only views of the request body (``np.frombuffer``): a runtime must not write into them.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from triserve_common.errors import ModelNotReadyError, TriserveError
from triserve_common.manifest import LoadedVersion, TensorSpec, load_model_version

log = logging.getLogger(__name__)


class Runtime(ABC):
    """A model version served by one inference engine.

    Subclasses set :attr:`platform` (e.g. ``"onnxruntime_onnx"``) and :attr:`artifact_kind`
    (the manifest artifact they load) and implement :meth:`_load` and :meth:`infer`.
    """

    platform: str = "unknown"
    """Model platform reported in the model metadata."""
    artifact_kind: str = ""
    """Artifact of the manifest this runtime loads (``"onnx"``, ``"paddle"``)."""

    def __init__(self, store: Path, name: str, version: str | None, max_batch_size: int = 256) -> None:
        self.store = store
        self.name = name
        self.requested_version = version
        self.max_batch_size = max_batch_size
        self._loaded: LoadedVersion | None = None
        self._ready = False

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Resolve and verify the artifact (raises ``ArtifactIntegrityError`` if tampered), then build
        the engine. Raises :class:`~triserve_common.errors.TriserveError` subclasses on failure."""
        loaded = load_model_version(self.store, self.name, self.requested_version, self.artifact_kind)
        self._load(loaded)
        self._loaded = loaded
        self._ready = True

    @abstractmethod
    def _load(self, loaded: LoadedVersion) -> None:
        """Build the engine from the verified artifact files."""

    def unload(self) -> None:
        """Release the engine; :attr:`ready` becomes False."""
        self._ready = False

    @property
    def ready(self) -> bool:
        """Whether :meth:`infer` may be called."""
        return self._ready

    # ------------------------------------------------------------------ inference

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: input name → array (leading batch dim) to output name → array.

        Synchronous and thread-safe; called from a worker thread.
        """

    @property
    def concurrency(self) -> int:
        """How many :meth:`infer` calls may usefully run at once (the data plane's thread pool size)."""
        return 1

    # ------------------------------------------------------------------ description

    @property
    def loaded(self) -> LoadedVersion:
        """The verified model version (after :meth:`load`)."""
        if self._loaded is None:
            raise ModelNotReadyError(f"model '{self.name}' is not loaded")
        return self._loaded

    @property
    def version(self) -> str:
        """The served version (after :meth:`load`)."""
        return self.loaded.manifest.version

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input specs from the manifest."""
        return self.loaded.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output specs from the manifest."""
        return self.loaded.manifest.outputs

    @property
    @abstractmethod
    def engine(self) -> str:
        """The execution engine actually in use, e.g. ``"CPUExecutionProvider"`` or ``"paddle-onednn"``."""

    def metadata(self) -> dict[str, Any]:
        """Engine details for the model metadata's ``parameters`` (always includes ``engine``)."""
        return {"engine": self.engine, "max_batch_size": self.max_batch_size}


def map_tensor_names(kind: str, manifest_names: list[str], engine_names: list[str]) -> dict[str, str]:
    """Manifest name → engine name: by name when the sets agree, else by position (same count).

    Exporters may rename tensors (Paddle fetches are ``fetch_name_0``...); the manifest's names are
    what clients see. Raises :class:`TriserveError` when the counts differ.
    """
    if set(manifest_names) == set(engine_names):
        return {name: name for name in manifest_names}
    if len(manifest_names) != len(engine_names):
        raise TriserveError(f"model has {kind}s {engine_names} but the manifest declares {manifest_names}")
    log.info(
        "%s names %s differ from the manifest's %s: mapped by position", kind, engine_names, manifest_names
    )
    return dict(zip(manifest_names, engine_names, strict=True))
