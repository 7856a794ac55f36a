"""A short real run of the job: exports, parity (and catching a perturbed artifact), resume, manifest."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from onnx import numpy_helper

from triserve_common.errors import ArtifactIntegrityError
from triserve_common.manifest import Manifest, read_manifest, verify_artifact
from triserve_trainer.cli import main
from triserve_trainer.data import load_mnist
from triserve_trainer.export_mar import check_mar
from triserve_trainer.export_paddle import export_paddle
from triserve_trainer.export_torch import check_onnx
from triserve_trainer.model import MAX_MACS, MnistNet, count_macs
from triserve_trainer.parity import check_parity, run_paddle
from triserve_trainer.runner import run_job
from triserve_trainer.specs import get_spec
from triserve_trainer.train import TrainConfig, load_checkpoint, normalise, to_tensor, train

from .conftest import SMALL, Job, config

MNIST_SPEC = get_spec("mnist").preprocessing()


@pytest.fixture()
def held_out(mnist_dir: Path) -> np.ndarray:
    data = load_mnist(mnist_dir, seed=0, limit_test=200)

    return normalise(to_tensor(data.test_images), MNIST_SPEC).numpy()


def test_layout_and_manifest(job: Job) -> None:
    vdir = job.store / "mnist" / "1"
    assert job.result.version_dir == vdir
    m = read_manifest(vdir)
    assert isinstance(m, Manifest) and m.name == "mnist" and m.version == "1"
    assert m.data.split == "t10k-stratified" and m.data.train_size == 1200 and m.data.test_size == 200
    assert [f.path for f in m.data.files] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert m.labels == [str(i) for i in range(10)]
    assert (
        m.inputs[0].name == "input"
        and m.inputs[0].shape == [-1, 1, 28, 28]
        and m.inputs[0].datatype == "FP32"
    )
    assert m.outputs[0].name == "logits" and m.outputs[0].shape == [-1, 10]
    assert m.preprocessing.mean == [0.1307] and m.preprocessing.std == [0.3081]
    assert 0 < m.model.macs_per_image <= MAX_MACS and m.model.parameters > 0
    assert {"torch", "onnxruntime", "paddlepaddle", "torch-model-archiver"} <= set(m.framework_versions)
    assert m.parity.passed and m.parity.images == 200
    assert m.metrics.epochs == 2 and 0.5 < m.metrics.accuracy <= 1.0
    files = {k: [f.path for f in a.files] for k, a in m.artifacts.items()}
    assert files == {
        "torchserve": ["mnist.mar"],
        "onnx": ["model.onnx"],
        "paddle": ["paddle/inference.json", "paddle/inference.pdiparams"],
        "torchscript": ["model.pt"],
    }
    for kind in files:
        paths = verify_artifact(m, vdir, kind)
        assert all(p.stat().st_size < 1_000_000 for p in paths)
    for name in ("history.json", "history.csv", "curves.png", "train.log", "summary.json"):
        assert (vdir / "training" / name).stat().st_size > 0
    raw = json.loads((vdir / "manifest.json").read_text())
    assert raw["backends"] == ["torchserve", "onnx", "paddle"]
    training = raw["training"]
    assert training["dataset"] == "mnist" and training["split"] == "t10k-stratified" and training["seed"] == 0
    assert training["epochs"] == 2 and training["resumed_from_epoch"] is None
    assert (
        training["command"].startswith("triserve-train --data-dir ") and "--epochs 2" in training["command"]
    )
    assert all(len(f.sha256) == 64 and f.size_bytes > 0 for f in m.data.files)
    assert not [p for p in job.store.iterdir() if p.name.startswith(".")]  # no staging folder left
    hist = json.loads((vdir / "training" / "history.json").read_text())["epochs"]
    assert [int(r["epoch"]) for r in hist] == [1, 2] and {"train_loss", "test_accuracy"} <= set(hist[0])
    assert (vdir / "training" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(vdir.rglob("*.pt*")) or [p.name for p in vdir.rglob("*.pt")] == ["model.pt"]


def test_tampered_copy_is_refused(job: Job, tmp_path: Path) -> None:
    vdir = tmp_path / "mnist" / "1"
    shutil.copytree(job.store / "mnist" / "1", vdir)
    m = read_manifest(vdir)
    onnx_path = vdir / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-10] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        verify_artifact(m, vdir, "onnx")
    (vdir / "paddle" / "inference.pdiparams").write_bytes(b"short")
    with pytest.raises(ArtifactIntegrityError, match="size"):
        verify_artifact(m, vdir, "paddle")
    (vdir / "mnist.mar").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        verify_artifact(m, vdir, "torchserve")
    verify_artifact(m, vdir, "torchscript")  # untouched


def test_exports(job: Job) -> None:
    vdir = job.store / "mnist" / "1"
    check_onnx(vdir / "model.onnx", min_opset=17)
    sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == [
        "logits"
    ]
    for n in (1, 7):
        (out,) = sess.run(["logits"], {"input": np.zeros((n, 1, 28, 28), np.float32)})
        assert out.shape == (n, 10)
    names = check_mar(vdir / "mnist.mar")
    with zipfile.ZipFile(vdir / "mnist.mar") as zf:
        cfg = yaml.safe_load(zf.read("model-config.yaml"))
        mar_manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        spec = json.loads(zf.read("preprocess.json"))
        names_map = json.loads(zf.read("index_to_name.json"))
    assert names_map == {str(i): str(i) for i in range(10)}
    assert {"batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout"} <= set(cfg)
    assert mar_manifest["model"]["handler"] == "mnist_handler.py" and "model.pt" in names
    assert spec["mean"] == [0.1307] and spec["width"] == 28
    out = run_paddle(
        vdir / "paddle" / "inference.json",
        vdir / "paddle" / "inference.pdiparams",
        np.zeros((3, 1, 28, 28), np.float32),
    )
    assert out.shape == (3, 10)


def test_parity_catches_perturbed_onnx(job: Job, held_out: np.ndarray, tmp_path: Path) -> None:
    vdir = job.store / "mnist" / "1"
    pd = (vdir / "paddle" / "inference.json", vdir / "paddle" / "inference.pdiparams")
    ok = check_parity(vdir / "model.pt", vdir / "model.onnx", *pd, held_out)
    assert ok.passed and ok.class_agreement == {"onnx": 1.0, "paddle": 1.0}
    assert max(ok.max_abs_logit_diff.values()) <= 1e-4
    proto = onnx.load(str(vdir / "model.onnx"))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[:50] += 0.05
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(proto, str(bad))
    res = check_parity(vdir / "model.pt", bad, *pd, held_out)
    assert not res.passed and res.max_abs_logit_diff["onnx"] > 1e-4
    assert res.max_abs_logit_diff["paddle"] <= 1e-4


def test_parity_catches_perturbed_paddle(job: Job, held_out: np.ndarray, tmp_path: Path) -> None:
    vdir = job.store / "mnist" / "1"
    ckpt = load_checkpoint(job.checkpoints / "last.pt")
    model = MnistNet()
    model.load_state_dict(ckpt["model"])
    perturbed = copy.deepcopy(model).eval()
    with torch.no_grad():
        perturbed.fc2.bias[3] += 1e-3  # tiny: classes may still agree, logits must not
    pd_model, pd_params = export_paddle(perturbed, tmp_path / "paddle")
    res = check_parity(vdir / "model.pt", vdir / "model.onnx", pd_model, pd_params, held_out)
    assert not res.passed and res.max_abs_logit_diff["paddle"] > 1e-4


def test_resume_continues_exactly(job: Job, mnist_dir: Path, tmp_path: Path) -> None:
    """Resuming from the epoch-1 checkpoint reproduces the uninterrupted run's final weights."""

    first = load_checkpoint(job.checkpoints / "epoch-001.pt")
    final = load_checkpoint(job.checkpoints / "epoch-002.pt")
    assert first["epoch"] == 1 and final["epoch"] == 2 and {"model", "optimizer", "metrics"} <= set(final)
    data = load_mnist(mnist_dir, seed=0, limit_train=1200, limit_test=200)
    shutil.copytree(job.checkpoints, tmp_path / "checkpoints")
    cfg = TrainConfig(
        epochs=2, seed=0, work_dir=tmp_path, resume=tmp_path / "checkpoints" / "epoch-001.pt", progress=False
    )
    resumed = train(data, cfg, MNIST_SPEC)
    assert [int(r["epoch"]) for r in resumed.history] == [1, 2]
    for key, value in final["model"].items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.test_accuracy == pytest.approx(final["metrics"]["test_accuracy"])


def test_rerun_reproduces_predictions(job: Job, mnist_dir: Path, tmp_path: Path) -> None:
    args = [
        "--data-dir",
        str(mnist_dir),
        "--store",
        str(tmp_path / "store"),
        "--work-dir",
        str(tmp_path / "w"),
        *SMALL,
    ]
    again = run_job(config(args))
    assert again.predictions == job.result.predictions
    assert again.manifest.metrics.accuracy == job.result.manifest.metrics.accuracy


def test_existing_version_refused_without_force(job: Job, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*job.args, "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_macs_counter() -> None:
    assert (
        count_macs(
            torch.nn.Sequential(
                torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(2 * 28 * 28, 10)
            )
        )
        == 28 * 28 * 2 * 9 + 2 * 28 * 28 * 10
    )
    assert count_macs(MnistNet()) <= MAX_MACS


def test_console_scripts() -> None:
    for cmd in (["triserve-train", "--help"], [sys.executable, "-m", "triserve_trainer", "--help"]):
        exe = shutil.which(cmd[0]) or str(Path(sys.executable).parent / cmd[0])
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60, check=True)
        assert "--data-dir" in out.stdout and "--resume" in out.stdout
