"""deploy/docker/gpu_libs.py: pip-installed CUDA/TensorRT libraries put on the loader path, TensorRT also
under its unversioned name, and the build-time dlopen check (run here on a fake venv whose "libraries"
are a real shared object copied under the TensorRT/CUDA names)."""

from __future__ import annotations

import _ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.deploy.project import REPO

SCRIPT = REPO / "deploy" / "docker" / "gpu_libs.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_libs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_libs = load()
A_SHARED_OBJECT = Path(_ctypes.__file__)  # any real ELF shared object loads under any name


def fake_venv(root: Path) -> Path:
    site = root / "venv" / "lib" / "python3.11" / "site-packages"
    layout = {
        "tensorrt_libs": ["libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10"],
        "nvidia/cu13/lib": ["libcudart.so.13", "libcublas.so.13"],
        "nvidia/cudnn/lib": ["libcudnn.so.9"],
    }
    for folder, names in layout.items():
        (site / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(A_SHARED_OBJECT, site / folder / name)
    (site / "nvidia" / "__init__.py").write_text("")
    (site / "nvidia" / "cudnn" / "include").mkdir()
    (site / "nvidia" / "cudnn" / "include" / "cudnn.h").write_text("")
    return root / "venv"


def test_setup_lists_library_folders_and_adds_unversioned_tensorrt_names(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    conf = tmp_path / "ld.so.conf.d" / "triserve-gpu.conf"
    dirs = gpu_libs.setup(venv, conf=conf, run_ldconfig=False)
    site = venv / "lib" / "python3.11" / "site-packages"
    assert dirs == sorted([site / "nvidia/cu13/lib", site / "nvidia/cudnn/lib", site / "tensorrt_libs"])
    assert conf.read_text().splitlines() == [str(d) for d in dirs]
    for stem in ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser"):
        plain = site / "tensorrt_libs" / f"{stem}.so"
        assert plain.is_symlink() and os.readlink(plain) == f"{stem}.so.10"
    assert not (site / "nvidia/cu13/lib/libcudart.so").exists(), "only TensorRT gets unversioned names"
    # idempotent: a second run keeps the links
    assert gpu_libs.setup(venv, conf=conf, run_ldconfig=False) == dirs


def check(names: list[str], library_path: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(map(str, library_path))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "check", *names], env=env, capture_output=True, text=True, timeout=60
    )


def test_check_loads_the_names_the_engines_open(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    dirs = gpu_libs.setup(venv, conf=tmp_path / "conf", run_ldconfig=False)
    ok = check(["libnvinfer.so", "libnvonnxparser.so.10", "libcudnn.so.9"], dirs)
    assert ok.returncode == 0, ok.stderr
    missing = check(["libnvinfer.so", "libnvinfer.so.11"], dirs)
    assert missing.returncode == 1 and "libnvinfer.so.11" in missing.stderr
    assert "cannot load libnvinfer.so:" not in missing.stderr
    # without the unversioned link, Paddle's dlopen("libnvinfer.so") fails: the check says so
    (dirs[-1] / "libnvinfer.so").unlink()
    unlinked = check(["libnvinfer.so"], dirs)
    assert unlinked.returncode == 1 and "libnvinfer.so" in unlinked.stderr
