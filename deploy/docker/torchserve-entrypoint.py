#!/usr/bin/env python3
"""Entry point of the TorchServe image: choose the model version to serve, then run start.sh.

TorchServe loads ``mnist.mar`` from one folder (``TS_MODEL_STORE``, read by services/torchserve/start.sh).
Like the Python services, which serve the highest version in their model store unless told otherwise,
this picks ``<store>/<model>/<version>`` from

    TRISERVE_TORCHSERVE_MODEL_STORE     store root                       [/opt/triserve/model_store]
    TRISERVE_TORCHSERVE_MODEL_NAME      model                            [mnist]
    TRISERVE_TORCHSERVE_MODEL_VERSION   version; unset/"latest": the highest one with a manifest.json

in the order of ``triserve_common.manifest.version_sort_key`` (numeric versions numerically, then the
others by name; a test keeps the two equal). An explicit ``TS_MODEL_STORE`` wins. Standard library only:
the image's venv holds torch and TorchServe, not the triserve packages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

START_SH = Path(__file__).resolve().parent / "services" / "torchserve" / "start.sh"
MANIFEST_FILE = "manifest.json"


def version_key(version: str) -> tuple[bool, int, str]:
    """Numeric versions first, numerically; then the others by name."""
    return (not version.isdigit(), int(version) if version.isdigit() else 0, version)


def version_dir(store: Path, name: str, version: str | None) -> Path:
    """The folder of ``version`` of model ``name``, or of its highest version when ``version`` is unset."""
    model_dir = store / name
    versions = sorted(
        (p.name for p in model_dir.iterdir() if (p / MANIFEST_FILE).is_file()) if model_dir.is_dir() else (),
        key=version_key,
    )
    if not versions:
        raise SystemExit(f"torchserve: no version of model '{name}' in {store}")
    if version in (None, "", "latest"):
        return model_dir / versions[-1]
    if version not in versions:
        available = ", ".join(versions)
        raise SystemExit(f"torchserve: version '{version}' of '{name}' not in {store} ({available})")
    return model_dir / version


def model_folder(env: Mapping[str, str]) -> Path:
    """The folder TorchServe should load ``mnist.mar`` from, for this environment."""
    if env.get("TS_MODEL_STORE"):
        return Path(env["TS_MODEL_STORE"])
    store = Path(env.get("TRISERVE_TORCHSERVE_MODEL_STORE", "/opt/triserve/model_store"))
    name = env.get("TRISERVE_TORCHSERVE_MODEL_NAME", "mnist")
    return version_dir(store, name, env.get("TRISERVE_TORCHSERVE_MODEL_VERSION"))


def main() -> None:
    env = dict(os.environ)
    folder = model_folder(env)
    env["TS_MODEL_STORE"] = str(folder)
    for key in ("STORE", "NAME", "VERSION"):
        env.pop(f"TRISERVE_TORCHSERVE_MODEL_{key}", None)
    print(f"torchserve: serving {folder}", file=sys.stderr, flush=True)
    os.execve(START_SH, [str(START_SH), *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
