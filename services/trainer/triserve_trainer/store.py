"""Writing a model version into the versioned store: staging, manifest, checksums, publishing."""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from triserve_common.manifest import (
    MANIFEST_FILE,
    Artifact,
    FileEntry,
    file_entry,
    list_versions,
    sha256_file,
)

REPO_ROOT = Path(__file__).resolve().parents[3]

#: manifest.artifacts key → (format, files relative to the version dir)
ARTIFACT_LAYOUT: dict[str, tuple[str, list[str]]] = {
    "torchserve": ("torchserve-mar", ["mnist.mar"]),
    "onnx": ("onnx", ["model.onnx"]),
    "paddle": ("paddle-inference", ["paddle/inference.json", "paddle/inference.pdiparams"]),
    "torchscript": ("torchscript", ["model.pt"]),
}


class VersionExistsError(Exception):
    """The target version is already in the store and --force was not given."""


def next_version(store: Path, name: str) -> str:
    """1 + the highest numeric version present (``"1"`` for a new model)."""
    numeric = [int(v) for v in list_versions(store, name) if v.isdigit()]
    return str(max(numeric, default=0) + 1)


def check_target(store: Path, name: str, version: str, force: bool) -> Path:
    target = store / name / version
    if target.exists() and not force:
        raise VersionExistsError(
            f"{target} already exists; choose another --version or pass --force to overwrite it"
        )
    return target


def artifact_entries(version_dir: Path, mar_name: str) -> dict[str, Artifact]:
    """sha256 + size of every artifact file, keyed as in ``manifest.artifacts``."""
    out: dict[str, Artifact] = {}
    for key, (fmt, files) in ARTIFACT_LAYOUT.items():
        names = [mar_name] if key == "torchserve" else files
        out[key] = Artifact(format=fmt, files=[file_entry(version_dir, version_dir / f) for f in names])
    return out


def data_file_entries(paths: list[Path]) -> list[FileEntry]:
    return [FileEntry(path=p.name, sha256=sha256_file(p), size_bytes=p.stat().st_size) for p in paths]


def framework_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in (
        "torch",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "paddlepaddle",
        "torch-model-archiver",
        "torchserve",
        "numpy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def publish(staging: Path, target: Path, force: bool) -> Path:
    """Move a finished staging dir to ``target`` (replacing it only with ``force``)."""
    if target.exists():
        if not force:
            raise VersionExistsError(f"{target} already exists (pass --force to overwrite it)")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(target))
    if not (target / MANIFEST_FILE).is_file():
        raise RuntimeError(f"{target} has no {MANIFEST_FILE} after publishing")
    return target


def predictions_digest(classes: list[int]) -> str:
    """Short fingerprint of held-out predictions (for comparing reruns)."""
    return hashlib.sha256(bytes(classes)).hexdigest()[:16]
