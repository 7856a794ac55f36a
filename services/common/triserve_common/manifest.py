"""Versioned model store: the manifest schema, loading and sha256 verification.

Layout::

    <store>/<model name>/<version>/manifest.json
    <store>/<model name>/<version>/<artifact files named in the manifest>

Every service loads its artifact through :func:`load_model_version`, which refuses
files whose size or sha256 does not match the manifest.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from triserve_common.errors import ArtifactIntegrityError, ModelNotFoundError

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

ArtifactKind = Literal["torchserve", "onnx", "paddle", "torchscript"]


class TensorSpec(BaseModel):
    """One input or output tensor: v2 datatype and shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: list[int]


class PreprocessSpec(BaseModel):
    """How an encoded image becomes the model's input tensor (applied once, at the gateway).

    Size and normalisation belong to the model: every manifest states them (no defaults here; the
    trainer's per-model specs write them)."""

    color_mode: Literal["L"] = "L"
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = "bilinear"
    invert: bool = False
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"


class FileEntry(BaseModel):
    """One file of an artifact, relative to the version directory."""

    path: str
    sha256: str
    size_bytes: int


class Artifact(BaseModel):
    """A runtime's artifact: its format and the files that make it up."""

    format: str
    files: list[FileEntry]


class DataSplit(BaseModel):
    """Where the training and held-out data came from."""

    source_dir: str
    files: list[FileEntry]
    split: Literal["standard", "t10k-stratified"]
    seed: int
    train_size: int
    test_size: int


class Metrics(BaseModel):
    """Held-out figures of the trained model."""

    accuracy: float
    loss: float
    epochs: int
    training_seconds: float


class ModelInfo(BaseModel):
    architecture: str
    parameters: int
    macs_per_image: int


class Parity(BaseModel):
    """Agreement of the exported artifacts with the TorchScript reference on held-out images."""

    images: int
    class_agreement: dict[str, float]
    max_abs_logit_diff: dict[str, float]
    tolerance: float
    passed: bool


class Manifest(BaseModel):
    """``manifest.json`` of one model version."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created_at: datetime
    git_commit: str | None = None
    framework_versions: dict[str, str]
    data: DataSplit
    metrics: Metrics
    model: ModelInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: PreprocessSpec
    labels: list[str]
    parity: Parity
    artifacts: dict[str, Artifact]
    backends: list[str] | None = None
    """Runtimes that serve this version (``torchserve``, ``onnx``, ``paddle``); None = every runtime
    whose artifact is in :attr:`artifacts`. An INT8 version lists only those with an INT8 route."""

    def serves_on(self, kind: str) -> bool:
        """Whether a runtime running artifact ``kind`` serves this version (artifact present and,
        when the manifest lists its backends, listed)."""
        return kind in self.artifacts and (self.backends is None or kind in self.backends)

    def not_served_reason(self, kind: str) -> str:
        """Why a runtime running artifact ``kind`` does not serve this version ("" when it does)."""
        if self.backends is not None and kind not in self.backends:
            return (f"the manifest of {self.name} version {self.version} lists backends "
                    f"{', '.join(self.backends)}")
        if kind not in self.artifacts:
            return (f"the manifest of {self.name} version {self.version} has no '{kind}' artifact "
                    f"(artifacts: {', '.join(sorted(self.artifacts))})")
        return ""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(version_dir: Path, path: Path) -> FileEntry:
    """Describe ``path`` (inside ``version_dir``) for the manifest."""
    return FileEntry(
        path=path.relative_to(version_dir).as_posix(),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
    )


def list_versions(store: Path, name: str) -> list[str]:
    """Versions of ``name`` present in the store (those with a manifest), numerically sorted."""
    model_dir = store / name
    if not model_dir.is_dir():
        return []
    versions = [p.name for p in model_dir.iterdir() if (p / MANIFEST_FILE).is_file()]
    return sorted(versions, key=version_sort_key)


def version_sort_key(version: str) -> tuple[bool, int, str]:
    """Order of model versions: numeric ones numerically, then the others by name."""
    return (not version.isdigit(), int(version) if version.isdigit() else 0, version)


def resolve_version(store: Path, name: str, version: str | None) -> str:
    """``version`` if it exists, else the highest one when ``version`` is None or "latest"."""
    versions = list_versions(store, name)
    if not versions:
        raise ModelNotFoundError(f"model '{name}' not found in model store {store}")
    if version in (None, "", "latest"):
        return versions[-1]
    if version not in versions:
        raise ModelNotFoundError(
            f"version '{version}' of model '{name}' not found (available: {', '.join(versions)})"
        )
    return version


def read_manifest(version_dir: Path) -> Manifest:
    """Parse ``manifest.json`` of a version directory.

    A missing, unreadable or malformed manifest raises :class:`ArtifactIntegrityError` whose
    one-line message names the file (services print it and stop; never a traceback).
    """
    path = version_dir / MANIFEST_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"manifest {path} not found") from None
    except OSError as exc:
        raise ArtifactIntegrityError(f"manifest {path} cannot be read: {exc.strerror}") from None
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ArtifactIntegrityError(
            f"manifest {path} is malformed: {where}: {first['msg']}{more}"
        ) from None


def verify_artifact(manifest: Manifest, version_dir: Path, kind: str) -> list[Path]:
    """Check size and sha256 of every file of artifact ``kind``; return their paths.

    Raises :class:`ArtifactIntegrityError` naming the file on any mismatch.
    """
    artifact = manifest.artifacts.get(kind)
    if artifact is None:
        raise ArtifactIntegrityError(
            f"manifest of {manifest.name} v{manifest.version} has no '{kind}' artifact "
            f"(has: {', '.join(sorted(manifest.artifacts))})"
        )
    paths: list[Path] = []
    for entry in artifact.files:
        path = version_dir / entry.path
        if not path.is_file():
            raise ArtifactIntegrityError(f"artifact file missing: {path}")
        size = path.stat().st_size
        if size != entry.size_bytes:
            raise ArtifactIntegrityError(
                f"artifact file {path}: size {size} bytes does not match manifest ({entry.size_bytes})"
            )
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ArtifactIntegrityError(
                f"artifact file {path}: sha256 {digest} does not match manifest ({entry.sha256}); "
                "refusing to load a tampered or corrupt artifact"
            )
        paths.append(path)
    return paths


class LoadedVersion(BaseModel):
    """A verified model version: its manifest, directory and the artifact's files."""

    manifest: Manifest
    version_dir: Path
    files: list[Path]


def load_model_version(store: Path, name: str, version: str | None, kind: str) -> LoadedVersion:
    """Resolve, read and verify one artifact of a model version from the store."""
    resolved = resolve_version(store, name, version)
    version_dir = store / name / resolved
    manifest = read_manifest(version_dir)
    files = verify_artifact(manifest, version_dir, kind)
    return LoadedVersion(manifest=manifest, version_dir=version_dir, files=files)
