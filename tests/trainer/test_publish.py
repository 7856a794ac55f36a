"""The store only ever holds complete versions: the trainer killed mid-publish, a full disk, --force.

Each check ends with :func:`assert_only_complete_versions`: every ``<model>/<version>`` folder has a
manifest and every artifact file it names matches its size and sha256.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from triserve_common.manifest import list_versions, read_manifest, verify_artifact
from triserve_trainer.store import STAGING_PREFIX, publish, staging_dir

from .conftest import TINY, Job


def assert_only_complete_versions(store: Path) -> dict[str, str]:
    """{"model/version": manifest created_at} of a store whose every version folder is complete."""
    seen: dict[str, str] = {}
    for model_dir in (p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folders = sorted(p.name for p in model_dir.iterdir())
        assert folders == list_versions(store, model_dir.name), f"incomplete version folder in {folders}"
        for version in folders:
            vdir = model_dir / version
            manifest = read_manifest(vdir)
            for kind in manifest.artifacts:
                verify_artifact(manifest, vdir, kind)
            seen[f"{model_dir.name}/{version}"] = manifest.created_at.isoformat()
    return seen


def _trainer(
    args: list[str], failpoint: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRISERVE_TRAINER_FAILPOINT"}
    if failpoint:
        env["TRISERVE_TRAINER_FAILPOINT"] = failpoint
    cmd = [sys.executable, "-m", "triserve_trainer", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)


@pytest.fixture()
def store_with_v1(job: Job, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(job.store / "mnist" / "1", store / "mnist" / "1")
    return store


@pytest.mark.parametrize(
    ("version", "failpoint"),
    [("2", "publish.before-rename"), ("1", "publish.before-rename"), ("1", "publish.after-exchange")],
)
def test_killed_mid_publish(
    store_with_v1: Path, mnist_dir: Path, tmp_path: Path, version: str, failpoint: str
) -> None:
    """SIGKILL at the rename (new version, or --force over v1) and right after the exchange."""
    before = assert_only_complete_versions(store_with_v1)
    args = ["--data-dir", str(mnist_dir), "--store", str(store_with_v1), "--work-dir", str(tmp_path / "w"),
            "--version", version, "--force", *TINY]  # fmt: skip
    done = _trainer(args, failpoint)
    assert done.returncode == -9, done.stderr[-2000:]  # killed by the failpoint
    after = assert_only_complete_versions(store_with_v1)
    if failpoint == "publish.before-rename":
        assert after == before  # nothing published, v1 untouched
    else:
        assert set(after) == {"mnist/1"} and after["mnist/1"] != before["mnist/1"]  # the new v1, complete
    leftovers = [p.name for p in store_with_v1.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(leftovers) == 1  # the killed job's staging folder: never a version
    # the next run removes the dead job's staging folder and publishes normally
    again = _trainer([*args[: -len(TINY)], *TINY])
    assert again.returncode == 0, again.stderr[-2000:]
    assert not [p for p in store_with_v1.iterdir() if p.name.startswith(".")]
    assert set(assert_only_complete_versions(store_with_v1)) == {"mnist/1", f"mnist/{version}"}


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2.5 MiB tmpfs mounted for this test (tests run as root; CI too)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2560k", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_full_disk_keeps_the_old_version(job: Job, small_disk: Path, mnist_dir: Path, tmp_path: Path) -> None:
    store = small_disk / "store"
    shutil.copytree(job.store / "mnist" / "1", store / "mnist" / "1")
    before = assert_only_complete_versions(store)
    args = ["--data-dir", str(mnist_dir), "--store", str(store), "--work-dir", str(tmp_path / "w"),
            "--version", "1", "--force", *TINY]  # fmt: skip
    done = _trainer(args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no space left" in done.stderr and "nothing was published" in done.stderr
    assert "Traceback" not in done.stderr
    assert assert_only_complete_versions(store) == before
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # staging removed: space given back
    new = _trainer([*args[: args.index("--version")], "--version", "2", *TINY])  # a new version: same refusal
    assert new.returncode == 2 and "no space left" in new.stderr
    assert assert_only_complete_versions(store) == before


def test_publish_refuses_incomplete_or_foreign_staging(tmp_path: Path) -> None:
    store = tmp_path / "store"
    staging = staging_dir(store, "m", "1")
    with pytest.raises(RuntimeError, match="incomplete"):
        publish(staging, store / "m" / "1", force=False)
    (staging / "manifest.json").write_text("{}")
    elsewhere = tmp_path / "other" / "m" / "1"
    with pytest.raises(RuntimeError, match="not be atomic"):
        publish(staging, elsewhere, force=False)
    assert publish(staging, store / "m" / "1", force=False) == store / "m" / "1"
    assert (store / "m" / "1" / "manifest.json").read_text() == "{}"
