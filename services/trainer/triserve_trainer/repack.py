"""``triserve-train --repack --model M --version V``: rebuild a version's ``.mar`` with the current handler.

The weights are untouched: the archive is rebuilt from the version's own ``model.pt`` with the
preprocessing and labels of its manifest and the ``model-config.yaml`` of the old archive. Only the
manifest's ``torchserve`` entry (sha256, size) changes; everything else in it is kept byte for byte.
The new folder is staged in the store and exchanged atomically with the old one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from collections.abc import Sequence

import yaml

from triserve_common.manifest import MANIFEST_FILE, file_entry, read_manifest
from triserve_trainer.job import JobContext, JobError, Step, publish_version
from triserve_trainer.record import TrainedManifest
from triserve_trainer.store import staging_dir

log = logging.getLogger("triserve_trainer")


def prepare_repack(ctx: JobContext) -> None:
    """Copy the existing version into a staging folder inside the store."""
    cfg = ctx.config
    if cfg.version is None:
        raise JobError("--repack needs --version (the version whose .mar to rebuild)")
    ctx.version = cfg.version
    ctx.target = cfg.store / cfg.model / cfg.version
    if not (ctx.target / MANIFEST_FILE).is_file():
        raise JobError(f"{ctx.target} has no {MANIFEST_FILE}: nothing to repack")
    ctx.config = type(cfg)(**{**cfg.__dict__, "force": True})
    ctx.staging = staging_dir(cfg.store, cfg.model, cfg.version)
    ctx.staging.rmdir()
    shutil.copytree(ctx.target, ctx.staging)


def rebuild_mar(ctx: JobContext) -> None:
    """Build the archive again from model.pt; update the manifest's torchserve entry only."""
    from triserve_trainer.export_mar import DEFAULT_MODEL_CONFIG, ArchiveError, build_mar

    manifest = read_manifest(ctx.staging)
    artifact = manifest.artifacts.get("torchserve")
    if artifact is None or len(artifact.files) != 1:
        raise JobError(f"{ctx.target}: the manifest has no single-file torchserve artifact to rebuild")
    mar_path = ctx.staging / artifact.files[0].path
    with zipfile.ZipFile(mar_path) as zf:
        names = zf.namelist()
        model_config = (
            yaml.safe_load(zf.read("model-config.yaml"))
            if "model-config.yaml" in names
            else DEFAULT_MODEL_CONFIG
        )
    mar_path.unlink()
    try:
        mar = build_mar(
            ctx.staging / "model.pt",
            ctx.staging,
            manifest.name,
            manifest.version,
            manifest.preprocessing,
            manifest.labels,
            model_config=model_config,
        )
    except ArchiveError as exc:
        raise JobError(str(exc), 1) from exc
    entry = file_entry(ctx.staging, mar)
    text = replace_entry(
        (ctx.staging / MANIFEST_FILE).read_text(), artifact.files[0].sha256, entry.sha256, entry.size_bytes
    )
    (ctx.staging / MANIFEST_FILE).write_text(text)
    ctx.manifest = TrainedManifest.model_validate(json.loads(text))
    ctx.parity = ctx.manifest.parity
    log.info("rebuilt %s: %d bytes, sha256 %s", mar.name, entry.size_bytes, entry.sha256)


def replace_entry(text: str, old_sha256: str, sha256: str, size: int) -> str:
    """The manifest text with one file entry's sha256 and size replaced, nothing else touched."""
    pattern = re.compile(rf'("sha256":\s*)"{old_sha256}"(,\s*"size_bytes":\s*)\d+')
    new, count = pattern.subn(lambda m: f'{m.group(1)}"{sha256}"{m.group(2)}{size}', text)
    if count != 1:
        raise JobError(f"manifest: expected one entry with sha256 {old_sha256}, found {count}")
    return new


REPACK_STEPS: Sequence[tuple[str, Step]] = (
    ("prepare", prepare_repack),
    ("repack", rebuild_mar),
    ("publish", publish_version),
)
