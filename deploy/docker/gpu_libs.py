"""Make the CUDA/cuDNN/TensorRT libraries that pip installed into a venv loadable, and prove it.

The GPU images take CUDA, cuDNN and TensorRT from PyPI wheels (``nvidia-*``, ``tensorrt-cu1x-libs``)
instead of a CUDA base image, so their versions are the ones the engines' own packages declare.
Those wheels put the libraries under ``site-packages``; two things are still needed:

* onnxruntime's TensorRT provider links ``libnvinfer.so.10`` / ``libnvonnxparser.so.10`` by soname,
  and Paddle opens TensorRT as the **unversioned** ``libnvinfer.so`` (shipped only by TensorRT's -dev
  packages): ``setup`` lists every library folder in ``/etc/ld.so.conf.d/``, adds the unversioned
  TensorRT names next to the versioned ones, and runs ``ldconfig``;
* ``check`` dlopens the given names the way the engines do and exits 1 naming those that fail,
  so an image that could not run its GPU engine fails to build instead of falling back at run time.

Usage (build stage of ``services/*/Dockerfile.gpu``, as root)::

    python gpu_libs.py setup /opt/venv
    python gpu_libs.py check libnvinfer.so libnvonnxparser.so.10
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

CONF = Path("/etc/ld.so.conf.d/triserve-gpu.conf")
UNVERSIONED = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")
"""TensorRT libraries that also get an unversioned ``lib*.so`` name."""
_SHARED = re.compile(r"^lib[\w.+-]*\.so(\.\d+)*$")


def library_dirs(venv: Path) -> list[Path]:
    """Folders under the venv's ``site-packages/nvidia`` and ``tensorrt_libs`` holding shared libraries."""
    found: set[Path] = set()
    for site in sorted(venv.glob("lib/python3*/site-packages")):
        for root in (site / "nvidia", site / "tensorrt_libs"):
            if not root.is_dir():
                continue
            for path in root.rglob("lib*.so*"):
                if path.is_file() and _SHARED.match(path.name):
                    found.add(path.parent)
    return sorted(found)


def link_unversioned(folder: Path, stems: Iterable[str] = UNVERSIONED) -> list[Path]:
    """``libX.so -> libX.so.<major>`` for each stem that has a versioned file here and no plain name."""
    made = []
    for stem in stems:
        plain = folder / f"{stem}.so"
        versioned = sorted(folder.glob(f"{stem}.so.[0-9]*"), key=lambda p: (len(p.name), p.name))
        if versioned and not plain.exists():
            plain.symlink_to(versioned[0].name)
            made.append(plain)
    return made


def setup(venv: Path, conf: Path = CONF, run_ldconfig: bool = True) -> list[Path]:
    """Unversioned TensorRT names + an ld.so.conf entry for every library folder; returns the folders."""
    dirs = library_dirs(venv)
    for folder in dirs:
        link_unversioned(folder)
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("".join(f"{d}\n" for d in dirs))
    if run_ldconfig:
        subprocess.run(["ldconfig"], check=True)
    return dirs


def check(names: Sequence[str]) -> list[str]:
    """The names that ``dlopen`` cannot load, each with the loader's message."""
    failed = []
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError as exc:
            failed.append(f"{name}: {exc}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "setup":
        dirs = setup(Path(args[1]))
        print(f"{len(dirs)} library folders in {CONF}:", *dirs, sep="\n  ")
        return 0
    if len(args) >= 2 and args[0] == "check":
        failed = check(args[1:])
        for line in failed:
            print(f"cannot load {line}", file=sys.stderr)
        if not failed:
            print("loadable:", " ".join(args[1:]))
        return 1 if failed else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
