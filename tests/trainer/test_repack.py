"""``--repack``: a version's .mar rebuilt with the current handler; weights and the rest untouched."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from tests.support.handler import handler_files
from triserve_common.manifest import read_manifest, verify_artifact
from triserve_trainer.runner import run_job

from .conftest import Job, config


def test_repack_keeps_weights_and_manifest(job: Job, tmp_path: Path) -> None:
    store = tmp_path / "store"
    vdir = store / "mnist" / "1"
    shutil.copytree(job.store / "mnist" / "1", vdir)
    old_text = (vdir / "manifest.json").read_text()
    old = read_manifest(vdir)
    with zipfile.ZipFile(vdir / "mnist.mar", "a") as zf:  # an archive carrying some older handler
        zf.writestr("mnist_handler.py", "# an old handler\n")
    model_pt = (vdir / "model.pt").read_bytes()
    run_job(config(["--store", str(store), "--work-dir", str(tmp_path / "w"), "--repack", "--version", "1"]))
    new = read_manifest(vdir)
    with zipfile.ZipFile(vdir / "mnist.mar") as zf:
        packaged = {p.name: zf.read(p.name) for p in handler_files()}
        assert packaged == {p.name: p.read_bytes() for p in handler_files()}
        assert zf.read("model.pt") == model_pt
    assert (vdir / "model.pt").read_bytes() == model_pt
    verify_artifact(new, vdir, "torchserve")
    new_text = (vdir / "manifest.json").read_text()
    changed = [(a, b) for a, b in zip(old_text.splitlines(), new_text.splitlines(), strict=True) if a != b]
    assert len(changed) <= 2 and all("sha256" in a or "size_bytes" in a for a, _ in changed)
    assert new.artifacts["onnx"] == old.artifacts["onnx"] and new.created_at == old.created_at
    assert not [p for p in store.iterdir() if p.name.startswith(".")]
