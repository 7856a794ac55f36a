"""``--quantize-from``: an INT8 version (ONNX Runtime QDQ + torch.ao TorchScript) of an FP32 version."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.support.procs import REPO_ROOT
from triserve_common.manifest import read_manifest, verify_artifact
from triserve_trainer.data import load_images
from triserve_trainer.job import JobError
from triserve_trainer.parity import run_onnx, run_torchscript
from triserve_trainer.runner import run_job
from triserve_trainer.train import normalise, to_tensor

from .conftest import Job, config


@pytest.fixture(scope="module")
def int8(job: Job, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("int8") / "store"
    shutil.copytree(job.store / "mnist" / "1", store / "mnist" / "1")
    args = ["--data-dir", str(mnist_dir), "--store", str(store), "--work-dir", str(store.parent / "w"),
            "--quantize-from", "1", "--calibration-images", "300",
            "--limit-train", "1200", "--limit-test", "200",
            "--no-progress"]  # fmt: skip
    # a 2-epoch model has close logits, so INT8 flips more of them than the committed model's 0.05 %
    loose = ["--int8-max-drop", "0.03", "--int8-min-agreement", "0.95"]
    result = run_job(config([*args, *loose]))
    assert result.version_dir == store / "mnist" / "2"
    return result.version_dir


def test_int8_artifacts_and_manifest(int8: Path, job: Job) -> None:
    m = read_manifest(int8)
    assert set(m.artifacts) == {"torchserve", "onnx", "torchscript"}  # no Paddle INT8 artifact
    for kind in m.artifacts:
        verify_artifact(m, int8, kind)
    raw = json.loads((int8 / "manifest.json").read_text())
    assert raw["backends"] == ["onnx", "torchserve"]
    q = raw["quantization"]
    assert q["reference_version"] == "1" and q["calibration"]["images"] == 300 and q["held_out_images"] == 200
    assert set(q["backends"]) == {"onnx", "torchserve"} and "paddle" in q["not_quantized"]
    assert "QDQ" in q["backends"]["onnx"]["method"] and "x86" in q["backends"]["torchserve"]["method"]
    assert m.preprocessing == job.result.manifest.preprocessing and m.labels == job.result.manifest.labels
    fp32 = {k: sum(f.size_bytes for f in a.files) for k, a in job.result.manifest.artifacts.items()}
    for kind, fp32_kind in (("onnx", "onnx"), ("torchserve", "torchscript")):
        assert q["backends"][kind]["size_bytes"] < fp32[fp32_kind] / 2.5  # int8 weights: about 4x smaller
    proto = onnx.load(str(int8 / "model.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    with zipfile.ZipFile(int8 / "mnist.mar") as zf:
        assert json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "2"


def test_int8_figures_are_measured(int8: Path, job: Job, mnist_dir: Path) -> None:
    """Recompute accuracy and agreement with v1 from the artifacts themselves."""
    m, raw = read_manifest(int8), json.loads((int8 / "manifest.json").read_text())
    data = load_images(mnist_dir, 0, 1200, 200)
    x = normalise(to_tensor(data.test_images), m.preprocessing).numpy()
    ref = run_torchscript(job.store / "mnist" / "1" / "model.pt", x).argmax(1)
    for kind, out in (
        ("onnx", run_onnx(int8 / "model.onnx", x)),
        ("torchserve", run_torchscript(int8 / "model.pt", x)),
    ):
        fig = raw["quantization"]["backends"][kind]
        assert fig["accuracy"] == pytest.approx(float((out.argmax(1) == data.test_labels).mean()))
        assert fig["agreement_with_reference"] == pytest.approx(float((out.argmax(1) == ref).mean()))
        assert fig["accuracy"] >= raw["quantization"]["reference_accuracy"] - 0.03
        assert fig["agreement_with_reference"] >= 0.95
    assert m.parity.passed and m.parity.tolerance == 0.03
    assert "FP32 - 3.0%" in raw["quantization"]["acceptance"]


def test_acceptance_gate_refuses(job: Job, mnist_dir: Path, tmp_path: Path) -> None:
    """An INT8 version below the agreement floor is not published (exit 1, staging kept for inspection)."""
    store = tmp_path / "store"
    shutil.copytree(job.store / "mnist" / "1", store / "mnist" / "1")
    args = ["--data-dir", str(mnist_dir), "--store", str(store), "--work-dir", str(tmp_path / "w"),
            "--quantize-from", "1", "--calibration-images", "300", "--limit-train", "1200",
            "--limit-test", "200", "--int8-min-agreement", "1.0", "--no-progress"]  # fmt: skip
    with pytest.raises(JobError, match="INT8 version rejected") as err:
        run_job(config(args))
    assert err.value.exit_code == 1
    assert not (store / "mnist" / "2").exists()


def test_quantize_from_missing_version(job: Job, tmp_path: Path, mnist_dir: Path) -> None:
    args = ["--data-dir", str(mnist_dir), "--store", str(job.store), "--work-dir", str(tmp_path),
            "--quantize-from", "7", "--version", "9", "--no-progress"]  # fmt: skip
    with pytest.raises(JobError, match="--quantize-from 7"):
        run_job(config(args))
    assert not (job.store / "mnist" / "9").exists()


def test_committed_int8_version() -> None:
    """model_store/mnist/2: INT8 of mnist/1, within 0.5 points of it on the 2,000 held-out images."""
    v1, v2 = (REPO_ROOT / "model_store" / "mnist" / v for v in ("1", "2"))
    m1, m2 = read_manifest(v1), read_manifest(v2)
    raw = json.loads((v2 / "manifest.json").read_text())
    assert raw["backends"] == ["onnx", "torchserve"] and raw["quantization"]["reference_version"] == "1"
    assert m2.data.files == m1.data.files and m2.data.seed == m1.data.seed and m2.data.test_size == 2000
    for fig in raw["quantization"]["backends"].values():
        assert fig["accuracy"] >= m1.metrics.accuracy - 0.005 and fig["agreement_with_reference"] >= 0.995
    for kind in m2.artifacts:
        verify_artifact(m2, v2, kind)
    assert np.isclose(m2.preprocessing.mean[0], m1.preprocessing.mean[0])
