"""Finding the IDX data sets (MNIST, Fashion-MNIST) for the trainer, ``triserve sample`` and the tests.

One lookup order for everyone (:func:`find_dataset`):

1. the configured folder: an explicit ``data_dir`` argument, else the data set's environment variable
   (``$TRISERVE_MNIST_DIR``, ``$TRISERVE_FASHION_MNIST_DIR``); a configured folder is used or the lookup
   fails naming the missing file — it never falls through to another place;
2. ``../shared/data/<name>`` beside the current folder or beside the repository;
3. system folders (Debian's ``dataset-fashion-mnist`` package: ``/usr/share/datasets/fashion-mnist``);
4. the user cache folder (``$TRISERVE_DATA_CACHE``, else ``$XDG_CACHE_HOME/triserve/data``, else
   ``~/.cache/triserve/data``), ``<cache>/<name>``;
5. a download into that cache from the data set's public mirrors (each file checked against its pinned
   sha256 before it is moved into place; a tqdm progress bar), unless ``download=False``.

A folder "has" a split when both its IDX files are there (``<stem>.gz`` or the raw ``<stem>``).
Every failure is a :class:`DatasetError` whose message says where it looked and what to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from triserve_common.idx import STANDARD_FILES, find_idx_file
from triserve_common.paths import REPO_ROOT

log = logging.getLogger(__name__)

__all__ = ["REPO_ROOT", "Dataset", "DatasetError", "find_dataset"]  # REPO_ROOT: from triserve_common.paths
CACHE_ENV = "TRISERVE_DATA_CACHE"
DOWNLOAD_TIMEOUT_S = 60.0
MAX_DOWNLOAD_BYTES = 64 << 20  # the largest file (Fashion train images) is ~26 MB


class DatasetError(Exception):
    """The data set is not where it was looked for and could not be downloaded."""


@dataclass(frozen=True)
class DataFile:
    """One published ``.gz`` file: its size and sha256 as the mirrors serve it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Dataset:
    """An IDX image-classification data set: files, mirrors, where a machine may already hold it."""

    name: str
    env: str
    labels: tuple[str, ...]
    files: tuple[DataFile, ...]
    mirrors: tuple[str, ...]
    system_dirs: tuple[Path, ...] = field(default=())

    def file(self, name: str) -> DataFile:
        """The pinned entry of ``name`` (a ``.gz`` file name)."""
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(name)


# Sizes and sha256 of the files as published (the same values TensorFlow Datasets and torchvision pin).
MNIST = Dataset(
    name="mnist",
    env="TRISERVE_MNIST_DIR",
    labels=tuple(str(i) for i in range(10)),
    files=(
        DataFile(
            "train-images-idx3-ubyte.gz",
            9_912_422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        DataFile(
            "train-labels-idx1-ubyte.gz",
            28_881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        DataFile(
            "t10k-images-idx3-ubyte.gz",
            1_648_877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        DataFile(
            "t10k-labels-idx1-ubyte.gz",
            4_542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
)

FASHION_MNIST = Dataset(
    name="fashion-mnist",
    env="TRISERVE_FASHION_MNIST_DIR",
    labels=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    files=(
        DataFile(
            "train-images-idx3-ubyte.gz",
            26_421_880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        DataFile(
            "train-labels-idx1-ubyte.gz",
            29_515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        DataFile(
            "t10k-images-idx3-ubyte.gz",
            4_422_102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        DataFile(
            "t10k-labels-idx1-ubyte.gz",
            5_148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
    mirrors=(
        "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
)

DATASETS: dict[str, Dataset] = {MNIST.name: MNIST, FASHION_MNIST.name: FASHION_MNIST}


def get_dataset(name: str) -> Dataset:
    """The data set called ``name`` (``mnist`` or ``fashion-mnist``)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown data set {name!r} (known: {', '.join(sorted(DATASETS))})") from None


def cache_root() -> Path:
    """``$TRISERVE_DATA_CACHE``, else ``$XDG_CACHE_HOME/triserve/data``, else ``~/.cache/triserve/data``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "triserve" / "data"


def shared_dirs(name: str) -> list[Path]:
    """``../shared/data/<name>`` beside the current folder and beside the repository (no duplicates)."""
    out: list[Path] = []
    for base in (Path.cwd(), REPO_ROOT):
        candidate = base.parent / "shared" / "data" / name
        if candidate.resolve() not in {p.resolve() for p in out}:
            out.append(candidate)
    return out


def stems(splits: Iterable[str]) -> list[str]:
    """IDX file stems of the given splits (``train``, ``t10k``), images before labels."""
    out: list[str] = []
    for split in splits:
        if split not in STANDARD_FILES:
            raise DatasetError(f"unknown split {split!r} (expected one of {sorted(STANDARD_FILES)})")
        out.extend(STANDARD_FILES[split])
    return out


def has_splits(folder: Path, splits: Iterable[str]) -> bool:
    """Whether ``folder`` holds both IDX files of every split."""
    return folder.is_dir() and all(find_idx_file(folder, stem) is not None for stem in stems(splits))


def configured_dir(dataset: Dataset, data_dir: Path | str | None = None) -> Path | None:
    """The folder the user configured: ``data_dir``, else the data set's environment variable."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    env = os.environ.get(dataset.env)
    return Path(env) if env else None


def candidate_dirs(dataset: Dataset) -> list[Path]:
    """Where an unconfigured lookup looks, in order (shared, system, cache)."""
    return [*shared_dirs(dataset.name), *dataset.system_dirs, cache_root() / dataset.name]


def find_dataset(
    name: str | Dataset,
    splits: Sequence[str] = ("t10k",),
    data_dir: Path | str | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """The folder holding ``splits`` of data set ``name`` (see the module doc for the order).

    ``mirrors`` overrides the data set's mirror URLs (tests point it at a loopback server).
    """
    dataset = name if isinstance(name, Dataset) else get_dataset(name)
    configured = configured_dir(dataset, data_dir)
    if configured is not None:
        missing = _missing(configured, splits)
        if missing:
            where = "does not exist" if not configured.is_dir() else f"lacks {', '.join(missing)}"
            raise DatasetError(
                f"{dataset.name} folder {configured} {where} (configured by "
                f"{'--data-dir' if data_dir else '$' + dataset.env}; unset it to search "
                f"../shared/data/{dataset.name}, the cache {cache_root() / dataset.name} or download)"
            )
        return configured
    for folder in candidate_dirs(dataset):
        if has_splits(folder, splits):
            return folder
    looked = ", ".join(str(p) for p in candidate_dirs(dataset))
    if not download:
        raise DatasetError(f"{dataset.name} {'/'.join(splits)} files not found (looked in {looked})")
    target = cache_root() / dataset.name
    log.info("%s not found locally (looked in %s): downloading into %s", dataset.name, looked, target)
    return download_dataset(dataset, target, splits, mirrors=mirrors, progress=progress)


def _missing(folder: Path, splits: Iterable[str]) -> list[str]:
    return [f"{stem}.gz" for stem in stems(splits) if find_idx_file(folder, stem) is None]


def download_dataset(
    dataset: Dataset,
    target: Path,
    splits: Sequence[str],
    *,
    mirrors: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Download the missing ``.gz`` files of ``splits`` into ``target``; each one sha256-checked."""
    target.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for stem in stems(splits):
        if find_idx_file(target, stem) is not None:
            continue
        entry = dataset.file(f"{stem}.gz")
        for base in mirrors if mirrors is not None else dataset.mirrors:
            url = base.rstrip("/") + "/" + entry.name
            try:
                fetch_file(url, target / entry.name, entry, progress=progress)
                break
            except DatasetError as exc:
                errors.append(str(exc))
                log.warning("%s", exc)
        else:
            raise DatasetError(
                f"cannot download {dataset.name} {entry.name} (offline or every mirror failed: "
                f"{'; '.join(errors) or 'no mirrors'}); put the IDX files in {target} or set ${dataset.env}"
            )
    return target


def fetch_file(url: str, dest: Path, entry: DataFile, *, progress: bool = True) -> Path:
    """Stream ``url`` into ``dest`` via a temporary file beside it; checked before the rename."""
    import httpx
    from tqdm import tqdm

    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            httpx.stream("GET", url, timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True) as response,
        ):
            if response.status_code != 200:
                raise DatasetError(f"{url}: HTTP {response.status_code}")
            bar = tqdm(
                total=entry.size,
                unit="B",
                unit_scale=True,
                desc=entry.name,
                disable=not progress,
                leave=False,
            )
            with bar:
                for chunk in response.iter_bytes(1 << 16):
                    size += len(chunk)
                    if size > min(MAX_DOWNLOAD_BYTES, entry.size):
                        raise DatasetError(f"{url}: more than the expected {entry.size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise DatasetError(
                f"{url}: got {size} bytes with sha256 {digest.hexdigest()}, "
                f"expected {entry.size} bytes with sha256 {entry.sha256}"
            )
        tmp.replace(dest)
    except httpx.HTTPError as exc:
        raise DatasetError(f"{url}: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s (%d bytes, sha256 ok)", dest, size)
    return dest
