"""triserve_common.idx: reading gz/raw IDX files and clear errors naming the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from triserve_common.idx import IdxError, load_split, read_idx, read_images, read_labels, write_idx


def test_reads_t10k_gz(mnist_dir: Path) -> None:
    pair = load_split(mnist_dir, "t10k")
    assert pair.images.shape == (10000, 28, 28) and pair.images.dtype == np.uint8
    assert pair.labels.shape == (10000,) and set(np.unique(pair.labels)) == set(range(10))


def test_raw_and_gz_agree(mnist_dir: Path, tmp_path: Path) -> None:
    src = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(src.read_bytes()))
    assert np.array_equal(read_labels(raw), read_labels(src))


def test_write_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        assert np.array_equal(read_idx(write_idx(tmp_path / name, arr)), arr)
    f32 = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f", f32)), f32)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(IdxError, match=r"t10k-images-idx3-ubyte\.gz: file not found"):
        load_split(tmp_path, "t10k")


def test_truncated_file(mnist_dir: Path, tmp_path: Path) -> None:
    data = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxError, match="truncated") as info:
        read_images(bad)
    assert info.value.path == bad and str(bad) in str(info.value)


def test_truncated_gzip(mnist_dir: Path, tmp_path: Path) -> None:
    data = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxError, match="gzip"):
        read_labels(bad)


def test_wrong_magic(mnist_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(IdxError, match="wrong magic number 2049, expected 2051"):
        read_images(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04not an idx file at all")
    with pytest.raises(IdxError, match="wrong magic"):
        read_labels(junk)


def test_count_mismatch(mnist_dir: Path, tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", read_images(mnist_dir / "t10k-images-idx3-ubyte.gz")[:10])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", read_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz")[:9])
    with pytest.raises(IdxError, match="9 labels but 10 images"):
        load_split(tmp_path, "t10k")
