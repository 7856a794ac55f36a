"""TorchServe model archive (``.mar``) built with the real ``torch-model-archiver``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from triserve_common.manifest import PreprocessSpec
from triserve_common.paths import REPO_ROOT

log = logging.getLogger(__name__)

HANDLER_DIR = REPO_ROOT / "handlers"
DEFAULT_HANDLER = HANDLER_DIR / "mnist_handler.py"
PREPROCESS_FILE = "preprocess.json"
#: TorchServe's convention for class names (``{"0": "T-shirt/top", ...}``), read by the handler.
LABELS_FILE = "index_to_name.json"

#: TorchServe per-model settings shipped in the archive (``model-config.yaml``).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 8,
    "maxBatchDelay": 2,
    "responseTimeout": 30,
}


class ArchiveError(Exception):
    """torch-model-archiver failed."""


def handler_modules(handler: Path) -> list[Path]:
    """The modules ``handler`` imports, packed beside it: every other ``*.py`` of its folder.

    TorchServe unpacks an archive into one folder and puts it on the worker's ``sys.path``, so the
    handler imports them by their plain module names.
    """
    return sorted(p for p in handler.parent.glob("*.py") if p != handler)


def build_mar(
    torchscript: Path,
    out_dir: Path,
    name: str,
    version: str,
    spec: PreprocessSpec,
    labels: list[str],
    handler: Path = DEFAULT_HANDLER,
    model_config: dict[str, Any] | None = None,
) -> Path:
    """``out_dir/<name>.mar``: model.pt, the handler and its modules, preprocess.json,
    index_to_name.json, model-config.yaml."""
    if not handler.is_file():
        raise ArchiveError(f"handler {handler} not found")
    modules = handler_modules(handler)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="triserve-mar-") as tmp:
        tmpdir = Path(tmp)
        spec_path = tmpdir / PREPROCESS_FILE
        spec_path.write_text(spec.model_dump_json(indent=2) + "\n")
        labels_path = tmpdir / LABELS_FILE
        labels_path.write_text(json.dumps({str(i): label for i, label in enumerate(labels)}, indent=2) + "\n")
        config_path = tmpdir / "model-config.yaml"
        config_path.write_text(yaml.safe_dump(model_config or DEFAULT_MODEL_CONFIG, sort_keys=False))
        work = tmpdir / "tmp"
        work.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name",
            name,
            "--version",
            version,
            "--serialized-file",
            str(torchscript),
            "--handler",
            str(handler),
            "--extra-files",
            ",".join(str(p) for p in [*modules, spec_path, labels_path]),
            "--config-file",
            str(config_path),
            "--export-path",
            str(out_dir),
            "--force",
        ]
        # torch-model-archiver stages files in $TMPDIR/<model name>: keep concurrent builds apart.
        env = {**os.environ, "TMPDIR": str(work)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise ArchiveError(f"torch-model-archiver failed ({proc.returncode}): {proc.stderr.strip()}")
    mar = out_dir / f"{name}.mar"
    if not mar.is_file():
        raise ArchiveError(f"torch-model-archiver did not write {mar}")
    check_mar(mar, serialized=torchscript.name, handler=handler)
    return mar


def check_mar(mar: Path, serialized: str = "model.pt", handler: Path = DEFAULT_HANDLER) -> list[str]:
    """The archive's file names; ArchiveError unless the handler and its modules, the model, spec,
    labels and config are in it."""
    with zipfile.ZipFile(mar) as zf:
        names = zf.namelist()
    code = {p.name for p in [handler, *handler_modules(handler)]}
    needed = {"MAR-INF/MANIFEST.json", serialized, PREPROCESS_FILE, LABELS_FILE, "model-config.yaml", *code}
    missing = needed - set(names)
    if missing:
        raise ArchiveError(f"{mar} lacks {sorted(missing)} (has {names})")
    return names
