"""The fashion model: Debian's Fashion-MNIST found by the data lookup, label names and its own
preprocessing in the manifest and the archive, resume from a checkpoint, the committed version."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.procs import REPO_ROOT
from triserve_common.manifest import read_manifest, verify_artifact
from triserve_trainer.data import load_images
from triserve_trainer.job import train_config
from triserve_trainer.model import count_macs
from triserve_trainer.train import load_checkpoint, train

from .conftest import Job, config

FASHION_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def test_small_fashion_version(fashion_job: Job) -> None:
    vdir = fashion_job.result.version_dir
    assert vdir == fashion_job.store / "fashion" / "1"
    m = read_manifest(vdir)
    assert m.name == "fashion" and m.labels == FASHION_LABELS
    assert m.data.split == "standard" and m.data.source_dir == "/usr/share/datasets/fashion-mnist"
    assert [f.path for f in m.data.files][:2] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert m.preprocessing.mean == [0.286] and m.preprocessing.std == [0.353] and m.preprocessing.width == 28
    assert m.parity.passed and m.parity.images == 200
    assert m.outputs[0].shape == [-1, 10] and 0 < m.model.macs_per_image <= 10_000_000
    assert set(m.artifacts) == {"torchserve", "onnx", "paddle", "torchscript"}
    assert [f.path for f in m.artifacts["torchserve"].files] == ["fashion.mar"]
    for kind in m.artifacts:
        verify_artifact(m, vdir, kind)
    with zipfile.ZipFile(vdir / "fashion.mar") as zf:
        assert json.loads(zf.read("index_to_name.json")) == {str(i): n for i, n in enumerate(FASHION_LABELS)}
        assert json.loads(zf.read("preprocess.json"))["mean"] == [0.286]
        assert json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]["modelName"] == "fashion"
    raw = json.loads((vdir / "manifest.json").read_text())
    assert raw["training"]["augment"] == "flip-shift" and raw["training"]["dataset"] == "fashion-mnist"


def test_fashion_needs_the_standard_split(mnist_dir: Path, tmp_path: Path) -> None:
    """A folder with only the t10k pair is refused for fashion (never silently split)."""
    from triserve_trainer.job import JobError
    from triserve_trainer.runner import run_job

    only_t10k = tmp_path / "t10k"
    only_t10k.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(Path("/usr/share/datasets/fashion-mnist") / name, only_t10k / name)
    args = ["--model", "fashion", "--data-dir", str(only_t10k), "--store", str(tmp_path / "s"),
            "--work-dir", str(tmp_path / "w"), "--no-progress"]  # fmt: skip
    with pytest.raises(JobError, match=r"lacks train-images-idx3-ubyte\.gz"):
        run_job(config(args))
    assert not (tmp_path / "s" / "fashion").exists()


def test_fashion_resume_continues_exactly(fashion_job: Job, tmp_path: Path) -> None:
    """Resuming the fashion run from its epoch-1 checkpoint gives the uninterrupted run's final weights."""
    cfg = config(fashion_job.args)
    data = load_images(Path("/usr/share/datasets/fashion-mnist"), 0, 1200, 200, require_standard=True)
    final = load_checkpoint(fashion_job.checkpoints / "epoch-002.pt")
    shutil.copytree(fashion_job.checkpoints, tmp_path / "checkpoints")
    tcfg = train_config(cfg)
    tcfg.work_dir, tcfg.resume, tcfg.tensorboard_dir = (
        tmp_path,
        tmp_path / "checkpoints" / "epoch-001.pt",
        None,
    )
    resumed = train(data, tcfg, cfg.spec.preprocessing())
    assert [int(r["epoch"]) for r in resumed.history] == [1, 2]
    for key, value in final["model"].items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert final["config"]["augment"] == "flip-shift"


def test_committed_fashion_version() -> None:
    """model_store/fashion/1: ≥ 91 % on the 10k test set, ≤ 10 M MACs, parity on all 10,000 images."""
    vdir = REPO_ROOT / "model_store" / "fashion" / "1"
    m = read_manifest(vdir)
    assert m.data.split == "standard" and m.data.train_size == 60000 and m.data.test_size == 10000
    assert m.metrics.accuracy >= 0.91
    assert m.model.macs_per_image <= 10_000_000
    assert m.parity.passed and m.parity.images == 10000
    assert max(m.parity.max_abs_logit_diff.values()) <= 1e-4
    assert m.parity.class_agreement == {"onnx": 1.0, "paddle": 1.0}
    assert m.labels == FASHION_LABELS
    for kind in m.artifacts:
        verify_artifact(m, vdir, kind)
    pt = torch.jit.load(str(vdir / "model.pt"))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        assert pt(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert list((vdir / "training" / "tensorboard").glob("events.out.tfevents.*"))


def test_fashion_network_within_budget() -> None:
    from triserve_trainer.model import ConvNet
    from triserve_trainer.specs import get_spec

    spec = get_spec("fashion")
    assert count_macs(ConvNet(spec.widths, spec.hidden)) <= spec.max_macs
    assert np.isclose(spec.preprocessing().mean[0], 0.2860)
