"""A tampered, missing or malformed model store stops start-up with one line naming the file.

Covers the launcher (``triserve up`` preflight), TorchServe's start script (``verify_mar.py``, the
same check in the container), and the gateway / runtime services reading a truncated manifest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO_ROOT
from tests.support.stack import free_port_config
from triserve_cli.launcher import Platform, PlatformError

START_SH = REPO_ROOT / "services" / "torchserve" / "start.sh"
VERIFY = REPO_ROOT / "services" / "torchserve" / "verify_mar.py"


@pytest.fixture
def store(tmp_path: Path, model_store: Path) -> Path:
    """A copy of model_store/mnist/1 (manifest + .mar only) under tmp_path/store/mnist/1."""
    version = tmp_path / "store" / "mnist" / "1"
    version.mkdir(parents=True)
    for name in ("manifest.json", "mnist.mar"):
        shutil.copy2(model_store / "mnist" / "1" / name, version / name)
    return version


def tamper(path: Path) -> None:
    """Flip one byte in the middle, keeping the size (only the sha256 can tell)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def run_start_sh(store: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """start.sh over the store holding ``store`` (a version folder), as the launcher runs it."""
    env = {**os.environ, "TS_MODEL_STORE": str(store.parent.parent), "TS_RUN_DIR": str(tmp_path / "ts-run"),
           "PYTHON": sys.executable}
    return subprocess.run(["bash", str(START_SH)], env=env, capture_output=True, text=True, timeout=60)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_verify_mar_accepts_the_committed_archive(store: Path) -> None:
    done = subprocess.run([sys.executable, str(VERIFY), str(store.parent.parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 archive(s) verified" in done.stdout


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("tamper", "does not match the manifest"),
        ("no-manifest", "manifest.json not found"),
        ("truncated-manifest", "manifest.json is malformed"),
        ("unlisted-archive", "extra.mar is not listed in"),
    ],
)
def test_start_script_refuses_a_damaged_store_with_one_line(
    store: Path, tmp_path: Path, damage: str, expected: str
) -> None:
    manifest = store / "manifest.json"
    if damage == "tamper":
        tamper(store / "mnist.mar")
    elif damage == "no-manifest":
        manifest.unlink()
    elif damage == "truncated-manifest":
        manifest.write_bytes(manifest.read_bytes()[:200])
    else:
        shutil.copy2(store / "mnist.mar", store / "extra.mar")
    done = run_start_sh(store, tmp_path)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert expected in line and str(store) in line
    assert not (tmp_path / "ts-run" / "config.properties").exists()  # stopped before TorchServe
    assert not list((tmp_path / "ts-run").glob("model-store/*"))  # nothing linked for it either


def test_launcher_refuses_a_tampered_archive_before_starting_anything(store: Path, tmp_path: Path) -> None:
    tamper(store / "mnist.mar")
    platform = Platform(free_port_config(tmp_path / "run", store.parent.parent))
    with pytest.raises(PlatformError, match=r"mnist\.mar: sha256 [0-9a-f]{64} does not match manifest"):
        platform.start()
    assert not platform.state_path.exists()


def test_launcher_names_a_malformed_manifest(store: Path, tmp_path: Path) -> None:
    (store / "manifest.json").write_text('{"name": "mnist", "version": ')
    platform = Platform(free_port_config(tmp_path / "run", store.parent.parent))
    with pytest.raises(PlatformError, match=f"manifest {store / 'manifest.json'} is malformed"):
        platform.start()


@pytest.mark.parametrize("service", ["triserve_gateway", "triserve_onnx"])
def test_services_stop_with_one_line_on_a_truncated_manifest(store: Path, service: str) -> None:
    manifest = store / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:300])
    prefix = "TRISERVE_GATEWAY_" if service == "triserve_gateway" else "TRISERVE_ONNX_"
    env = {**os.environ, f"{prefix}MODEL_STORE": str(store.parent.parent), f"{prefix}PORT": "0"}
    argv = [sys.executable, "-m", service]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert f"manifest {manifest} is malformed" in output
