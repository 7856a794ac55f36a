"""Writing a model version into the versioned store: staging, manifest, checksums, atomic publishing.

A version is built in a staging folder inside the store itself (``<store>/.triserve-staging-...``, the
same filesystem) and published by one rename, so the store only ever holds complete versions: a job
killed or out of disk space leaves at most a staging folder, which the next job removes.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import shutil
import signal
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
from triserve_common.paths import REPO_ROOT

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


def artifact_entries(
    version_dir: Path, mar_name: str, kinds: list[str] | None = None, formats: dict[str, str] | None = None
) -> dict[str, Artifact]:
    """sha256 + size of every artifact file, keyed as in ``manifest.artifacts`` (``kinds``: a subset)."""
    out: dict[str, Artifact] = {}
    for key, (fmt, files) in ARTIFACT_LAYOUT.items():
        if kinds is not None and key not in kinds:
            continue
        fmt = (formats or {}).get(key, fmt)
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


STAGING_PREFIX = ".triserve-staging-"
RENAME_EXCHANGE = 2  # linux/fs.h


def failpoint(name: str) -> None:
    """Fault injection for the publish tests: ``TRISERVE_TRAINER_FAILPOINT=<name>`` kills the process here."""
    if os.environ.get("TRISERVE_TRAINER_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def staging_dir(store: Path, name: str, version: str) -> Path:
    """A fresh staging folder for ``name``/``version`` inside the store (same filesystem → atomic rename).

    It sits at the store's top level under a dot-name, so it never looks like ``<model>/<version>``;
    staging folders left by killed jobs of the same model and version are removed first.
    """
    store.mkdir(parents=True, exist_ok=True)
    for stale in store.glob(f"{STAGING_PREFIX}{name}-{version}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = store / f"{STAGING_PREFIX}{name}-{version}-{os.getpid()}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            return False
        raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")
    return True


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder of ``root`` to disk before it is published."""
    for path in [*sorted(root.rglob("*")), root]:
        if path.is_file() or path.is_dir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish(staging: Path, target: Path, force: bool) -> Path:
    """Publish a complete staging folder as ``target`` with one atomic rename.

    New version: ``rename(staging, target)``. Existing one with ``force``: the two folders are
    exchanged atomically (``renameat2``), so readers see the old or the new version, never a mix;
    the old one is deleted afterwards. Without ``renameat2`` the old folder is first renamed aside
    (a reader may briefly see no version), never deleted before the new one is in place.
    """
    if not (staging / MANIFEST_FILE).is_file():
        raise RuntimeError(f"{staging} has no {MANIFEST_FILE}: refusing to publish an incomplete version")
    if staging.parent.resolve() != target.parent.parent.resolve():
        raise RuntimeError(
            f"staging {staging} is not in the store of {target}: the rename would not be atomic"
        )
    _fsync_tree(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    failpoint("publish.before-rename")
    if not target.exists():
        os.rename(staging, target)
    elif not force:
        raise VersionExistsError(f"{target} already exists (pass --force to overwrite it)")
    elif _exchange(staging, target):
        failpoint("publish.after-exchange")
        shutil.rmtree(staging)  # now the old version
    else:
        aside = staging.with_name(staging.name + "-old")
        os.rename(target, aside)
        os.rename(staging, target)
        shutil.rmtree(aside)
    _fsync_dir(target.parent)
    return target


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def predictions_digest(classes: list[int]) -> str:
    """Short fingerprint of held-out predictions (for comparing reruns)."""
    return hashlib.sha256(bytes(classes)).hexdigest()[:16]
