"""Trainer data loading: t10k-only stratified split, the standard 4-file layout, bad files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from triserve_common.idx import read_images, read_labels, write_idx
from triserve_trainer.cli import main
from triserve_trainer.data import DataError, load_mnist


def test_t10k_only_stratified_split(mnist_dir: Path) -> None:
    a = load_mnist(mnist_dir, seed=0)
    assert a.split == "t10k-stratified"
    assert len(a.train_labels) == 8000 and len(a.test_labels) == 2000
    full = np.bincount(read_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz"), minlength=10)
    held = np.bincount(a.test_labels, minlength=10)
    assert np.all(np.abs(held - full * 0.2) < 1.0)  # stratified: within rounding of 20 % per class
    b = load_mnist(mnist_dir, seed=0)
    assert np.array_equal(a.test_images, b.test_images) and np.array_equal(a.train_labels, b.train_labels)
    c = load_mnist(mnist_dir, seed=1)
    assert not np.array_equal(a.test_images, c.test_images)
    # train and held-out are disjoint: no held-out image appears in train
    train_keys = {img.tobytes() for img in a.train_images}
    overlap = sum(img.tobytes() in train_keys for img in a.test_images)
    assert overlap <= 5  # MNIST t10k has a handful of exact duplicate images, nothing more


def test_standard_four_file_layout(mnist_dir: Path, tmp_path: Path) -> None:
    images = read_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:600])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:600])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[600:800])  # raw, not gz
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[600:800])
    data = load_mnist(tmp_path, seed=0)
    assert data.split == "standard"
    assert np.array_equal(data.train_images, images[:600]) and np.array_equal(
        data.test_labels, labels[600:800]
    )
    assert [p.name for p in data.files] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]


def test_limits(mnist_dir: Path) -> None:
    data = load_mnist(mnist_dir, seed=0, limit_train=100, limit_test=50)
    assert len(data.train_labels) == 100 and len(data.test_labels) == 50


def test_missing_dir_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope does not exist"):
        load_mnist(tmp_path / "nope", seed=0)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: file not found"):
        load_mnist(tmp_path, seed=0)


@pytest.mark.parametrize("damage", ["truncate", "magic", "missing-labels"])
def test_cli_bad_data_exits_2(
    damage: str, mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, data / name)
    target = data / "t10k-images-idx3-ubyte.gz"
    if damage == "truncate":
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(raw[:-1000]))
        expected = "truncated"
    elif damage == "magic":
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(b"\x00\x00\x08\x04" + raw[4:]))  # 2052, not 2051
        expected = "wrong magic number 2052"
    else:
        target = data / "t10k-labels-idx1-ubyte.gz"
        target.unlink()
        expected = "missing"
    code = main(
        [
            "--data-dir",
            str(data),
            "--store",
            str(tmp_path / "store"),
            "--work-dir",
            str(tmp_path / "work"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    if expected == "missing":  # the data lookup names the folder, the file and how it was configured
        assert f"{data} lacks t10k-labels-idx1-ubyte.gz (configured by --data-dir" in err
    else:
        assert f"{target}: {expected}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "store" / "mnist").exists()
