"""Data set lookup (configured → ../shared → system → cache → download) and the download path,
against a loopback HTTP server serving IDX files the test writes itself (never the internet)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.support.procs import free_port
from triserve_common import datasets
from triserve_common.datasets import DataFile, Dataset, DatasetError, find_dataset
from triserve_common.idx import load_split, write_idx


def _write_split(folder: Path, split: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "train" if split == "train" else "t10k"
    write_idx(folder / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


def _pinned(folder: Path, name: str = "toy") -> Dataset:
    """A data set whose pins are the files the test wrote in ``folder`` (served by the loopback server)."""
    files = tuple(
        DataFile(p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.glob("*.gz"))
    )
    return Dataset(name=name, env="TRISERVE_TOY_DIR", labels=tuple("0123456789"), files=files, mirrors=())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over ``tmp_path/www``: (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(_Quiet, directory=str(www))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/", www
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real env/cache/shared folder leaks in: cwd and repo root point at an empty tree."""
    for name in ("TRISERVE_MNIST_DIR", "TRISERVE_FASHION_MNIST_DIR", "TRISERVE_TOY_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(datasets.CACHE_ENV, str(cache))
    work = tmp_path / "work" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(datasets, "REPO_ROOT", work)
    return cache


def test_download_checks_sha256_and_lands_in_the_cache(mirror: tuple[str, Path], isolated: Path) -> None:
    url, www = mirror
    _write_split(www, "t10k", 50)
    toy = _pinned(www)
    folder = find_dataset(toy, ("t10k",), mirrors=[url], progress=False)
    assert folder == isolated / "toy"
    pair = load_split(folder, "t10k")
    assert pair.images.shape == (50, 28, 28)
    assert (folder / "t10k-images-idx3-ubyte.gz").read_bytes() == (
        www / "t10k-images-idx3-ubyte.gz"
    ).read_bytes()
    assert not list(folder.glob(".*part"))
    # found in the cache now: no server needed any more
    assert find_dataset(toy, ("t10k",), mirrors=[], download=False) == folder


def test_bad_mirror_is_skipped_for_the_next(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, www = mirror
    good = www / "good"
    _write_split(good, "t10k", 20)
    toy = _pinned(good)
    bad = www / "bad"
    bad.mkdir()
    for f in good.iterdir():  # same names, different bytes
        (bad / f.name).write_bytes(gzip.compress(b"not the pinned file"))
    folder = find_dataset(
        toy, ("t10k",), mirrors=[url + "bad/", url + "missing/", url + "good/"], progress=False
    )
    assert load_split(folder, "t10k").labels.shape == (20,)


def test_every_mirror_wrong_or_offline_is_one_clear_error(mirror: tuple[str, Path], isolated: Path) -> None:
    url, www = mirror
    _write_split(www, "t10k", 10)
    toy = _pinned(www)
    entry = toy.files[0]
    lying = replace(toy, files=(replace(entry, sha256="0" * 64), *toy.files[1:]))
    offline = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    with pytest.raises(DatasetError) as err:
        find_dataset(lying, ("t10k",), mirrors=[offline, url], progress=False)
    message = str(err.value)
    assert "cannot download toy" in message and "ConnectError" in message and "sha256" in message
    assert "TRISERVE_TOY_DIR" in message
    assert not (isolated / "toy" / entry.name).exists()
    assert not list((isolated / "toy").glob(".*"))  # no partial file left behind


def test_oversized_body_is_cut_off(mirror: tuple[str, Path]) -> None:
    url, www = mirror
    _write_split(www, "t10k", 10)
    toy = _pinned(www)
    big = www / "big"
    big.mkdir()
    for f in toy.files:
        (big / f.name).write_bytes(b"x" * (f.size + 100_000))
    with pytest.raises(DatasetError, match="more than the expected"):
        find_dataset(toy, ("t10k",), mirrors=[url + "big/"], progress=False)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    toy = Dataset(
        name="toy", env="TRISERVE_TOY_DIR", labels=(), files=(), mirrors=(), system_dirs=(tmp_path / "sys",)
    )
    with pytest.raises(DatasetError, match="not found"):
        find_dataset(toy, ("t10k",), download=False)
    _write_split(isolated / "toy", "t10k", 5)  # 4. cache
    assert find_dataset(toy, ("t10k",), download=False) == isolated / "toy"
    _write_split(tmp_path / "sys", "t10k", 5)  # 3. system folder
    assert find_dataset(toy, ("t10k",), download=False) == tmp_path / "sys"
    shared = Path.cwd().parent / "shared" / "data" / "toy"  # 2. ../shared/data/<name>
    _write_split(shared, "t10k", 5)
    assert find_dataset(toy, ("t10k",), download=False).resolve() == shared.resolve()
    # a split the shared folder lacks is looked for further on
    _write_split(tmp_path / "sys", "train", 5)
    assert find_dataset(toy, ("train", "t10k"), download=False) == tmp_path / "sys"
    configured = tmp_path / "mine"  # 1. configured: used, or an error naming what is missing
    monkeypatch.setenv("TRISERVE_TOY_DIR", str(configured))
    with pytest.raises(DatasetError, match=r"mine does not exist.*\$TRISERVE_TOY_DIR"):
        find_dataset(toy, ("t10k",), download=False)
    configured.mkdir()
    with pytest.raises(DatasetError, match=r"lacks t10k-images-idx3-ubyte\.gz, t10k-labels-idx1-ubyte\.gz"):
        find_dataset(toy, ("t10k",), download=False)
    _write_split(configured, "t10k", 5)
    assert find_dataset(toy, ("t10k",), download=False) == configured
    assert find_dataset(toy, ("t10k",), shared, download=False) == shared  # argument beats env


def test_fashion_mnist_from_debian_package() -> None:
    """dataset-fashion-mnist (apt) installs the standard four files where the lookup finds them."""
    folder = find_dataset("fashion-mnist", ("train", "t10k"), download=False)
    assert folder == Path("/usr/share/datasets/fashion-mnist")
    test = load_split(folder, "t10k")
    assert test.images.shape == (10000, 28, 28) and np.bincount(test.labels).tolist() == [1000] * 10
    for entry in datasets.FASHION_MNIST.files:  # the package's files hold the pinned content
        local = gzip.decompress((folder / entry.name).read_bytes())
        assert len(local) in (7840016, 10008, 47040016, 60008)


def test_registry() -> None:
    assert datasets.FASHION_MNIST.labels[9] == "Ankle boot" and len(datasets.MNIST.labels) == 10
    with pytest.raises(DatasetError, match="known: fashion-mnist, mnist"):
        datasets.get_dataset("cifar")
    for ds in datasets.DATASETS.values():
        assert {f.name for f in ds.files} == {f"{s}.gz" for s in datasets.stems(("train", "t10k"))} and all(
            len(f.sha256) == 64 for f in ds.files
        )
