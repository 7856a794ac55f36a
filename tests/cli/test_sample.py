"""``triserve sample``: real MNIST t10k data, PNG output checked against the IDX files read independently."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triserve_cli.sample import pick


def _raw_t10k(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels parsed by hand (not via triserve_common.idx, which the CLI uses)."""
    images = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    return np.frombuffer(images, np.uint8, offset=16).reshape(-1, 28, 28), np.frombuffer(
        labels, np.uint8, offset=8
    )


@pytest.fixture(scope="module")
def t10k(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return _raw_t10k(mnist_dir)


def _triserve(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "triserve_cli", *args], capture_output=True, timeout=120, cwd=cwd, check=False
    )


def _decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (28, 28)
    assert image.mode == "L"
    return np.asarray(image)


@pytest.mark.parametrize("digit", range(10))
def test_pick_defaults_to_the_most_typical_image(
    mnist_dir: Path, t10k: tuple[np.ndarray, np.ndarray], digit: int
) -> None:
    images, labels = t10k
    sample = pick(mnist_dir, digit=digit)
    members = np.flatnonzero(labels == digit)
    flat = images[members].reshape(len(members), -1).astype(np.float64)
    distances = np.linalg.norm(flat - flat.mean(axis=0), axis=1)
    assert sample.index == members[np.argmin(distances)]
    assert labels[sample.index] == sample.label == digit
    np.testing.assert_array_equal(_decode(sample.png()), images[sample.index])


def test_pick_nth_in_file_order(mnist_dir: Path, t10k: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = t10k
    for digit in range(10):
        assert pick(mnist_dir, digit=digit, nth=0).index == np.flatnonzero(labels == digit)[0]
    with pytest.raises(ValueError, match="out of range"):
        pick(mnist_dir, digit=1, nth=int((labels == 1).sum()))


def test_cli_digit_to_stdout(mnist_dir: Path, t10k: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = t10k
    done = _triserve("sample", "7", "--nth", "3", "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr.decode()
    index = int(np.flatnonzero(labels == 7)[3])
    np.testing.assert_array_equal(_decode(done.stdout), images[index])
    assert f"#{index}, label 7" in done.stderr.decode()


def test_cli_index_to_file(mnist_dir: Path, t10k: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    images, labels = t10k
    out = tmp_path / "42.png"
    done = _triserve("sample", "--index", "42", "--data-dir", str(mnist_dir), "-o", str(out))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b""
    np.testing.assert_array_equal(_decode(out.read_bytes()), images[42])
    assert f"label {labels[42]}" in done.stderr.decode()


def test_cli_index_and_digit_must_agree(mnist_dir: Path, t10k: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = t10k
    right = _triserve("sample", "--index", "0", "--digit", str(labels[0]), "--data-dir", str(mnist_dir))
    assert right.returncode == 0, right.stderr.decode()
    wrong_digit = (int(labels[0]) + 1) % 10
    wrong = _triserve("sample", "--index", "0", "--digit", str(wrong_digit), "--data-dir", str(mnist_dir))
    assert wrong.returncode == 1
    assert wrong.stdout == b""
    assert f"is a {labels[0]}, not a {wrong_digit}" in wrong.stderr.decode()


def test_cli_default_data_dir_is_shared_beside_the_repo(repo_root: Path, mnist_dir: Path) -> None:
    if mnist_dir.resolve() != (repo_root.parent / "shared" / "data" / "mnist").resolve():
        pytest.skip("TRISERVE_MNIST_DIR points elsewhere")
    done = _triserve("sample", "0", cwd=repo_root)
    assert done.returncode == 0, done.stderr.decode()
    assert _decode(done.stdout).shape == (28, 28)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["10"], 2, "digit must be 0-9"),
        (["--index", "10000"], 1, "out of range"),
        ([], 1, "give a digit"),
    ],
)
def test_cli_bad_arguments(mnist_dir: Path, args: list[str], code: int, message: str) -> None:
    done = _triserve("sample", *args, "--data-dir", str(mnist_dir))
    assert done.returncode == code
    assert message in done.stderr.decode()


def test_cli_missing_data_names_the_file(tmp_path: Path) -> None:
    done = _triserve("sample", "3", "--data-dir", str(tmp_path))
    assert done.returncode == 1
    err = done.stderr.decode()
    assert str(tmp_path) in err and "t10k-images-idx3-ubyte" in err and "--data-dir" in err


def test_cli_fashion_boot(tmp_path: Path) -> None:
    """`triserve sample --model fashion 9 > boot.png`: the most typical ankle boot of the test set."""
    raw = Path("/usr/share/datasets/fashion-mnist")
    images, labels = _raw_t10k(raw)
    done = _triserve("sample", "--model", "fashion", "9", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    boots = np.flatnonzero(labels == 9)
    flat = images[boots].reshape(len(boots), -1).astype(np.float64)
    expected = boots[np.argmin(np.linalg.norm(flat - flat.mean(axis=0), axis=1))]
    np.testing.assert_array_equal(_decode(done.stdout), images[expected])
    assert done.stderr.decode() == f"t10k image #{expected}, label 9 (Ankle boot)\n"


def test_cli_stderr_lines_end_with_a_newline(mnist_dir: Path) -> None:
    ok = _triserve("sample", "4", "--data-dir", str(mnist_dir))
    bad = _triserve("sample", "--index", "10000", "--data-dir", str(mnist_dir))
    assert ok.returncode == 0 and ok.stderr.endswith(b"\n") and ok.stderr.count(b"\n") == 1
    assert bad.returncode == 1 and bad.stderr.endswith(b"\n") and bad.stderr.count(b"\n") == 1

