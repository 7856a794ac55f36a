"""Training data: the standard train/t10k split, or (MNIST without its train files) a seeded stratified
split of the t10k pair. The folder comes from :func:`triserve_common.datasets.find_dataset`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from triserve_common.datasets import DatasetError, find_dataset
from triserve_common.idx import STANDARD_FILES, IdxError, find_idx_file, load_split
from triserve_common.manifest import PreprocessSpec

log = logging.getLogger(__name__)

T10K_TRAIN_SIZE = 8000
T10K_TEST_SIZE = 2000


class DataError(Exception):
    """The data folder cannot provide a usable split (message names the file)."""


@dataclass
class ImageData:
    """uint8 images ``[N,28,28]`` + uint8 labels ``[N]`` for training and held-out evaluation."""

    train_images: npt.NDArray[np.uint8]
    train_labels: npt.NDArray[np.uint8]
    test_images: npt.NDArray[np.uint8]
    test_labels: npt.NDArray[np.uint8]
    split: str  # "standard" | "t10k-stratified"
    seed: int
    source_dir: Path
    files: list[Path] = field(default_factory=list)


def stratified_split(
    labels: npt.NDArray[np.integer], test_size: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded stratified split of indices: (train, test), test has exactly ``test_size`` items.

    Each class gets ``test_size * n_c / N`` test items, rounded by largest remainder.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / labels.size
    take = np.floor(exact).astype(np.int64)
    short = test_size - int(take.sum())
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:short]] += 1
    train_parts, test_parts = [], []
    for cls, n_test in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(idx.size)]
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = np.concatenate(train_parts)
    test = np.concatenate(test_parts)
    return train[rng.permutation(train.size)], np.sort(test)


def has_standard_layout(data_dir: Path) -> bool:
    return all(find_idx_file(data_dir, stem) is not None for stem in STANDARD_FILES["train"])


def locate_data(
    dataset: str,
    required_splits: tuple[str, ...],
    data_dir: Path | None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """The data folder (configured, ../shared/data, system, cache or a fresh download); DataError if none."""
    try:
        return find_dataset(dataset, required_splits, data_dir, download=download, progress=progress)
    except DatasetError as exc:
        raise DataError(str(exc)) from exc


def load_images(
    data_dir: Path,
    seed: int,
    limit_train: int | None = None,
    limit_test: int | None = None,
    require_standard: bool = False,
) -> ImageData:
    """Load ``data_dir`` (4 standard files, or only the t10k pair → 8,000/2,000 split).

    ``require_standard``: refuse the t10k-only fallback (Fashion-MNIST is always trained on 60k/10k).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    try:
        if has_standard_layout(data_dir):
            data = _standard(data_dir, seed)
        elif require_standard:
            missing = ", ".join(f"{s}.gz" for s in STANDARD_FILES["train"])
            raise DataError(
                f"{data_dir} lacks the training files ({missing}); this model needs the 60k/10k split"
            )
        else:
            data = _t10k_stratified(data_dir, seed)
    except IdxError as exc:
        raise DataError(f"data error: {exc}") from exc
    if limit_train is not None:
        data.train_images, data.train_labels = (
            data.train_images[:limit_train],
            data.train_labels[:limit_train],
        )
    if limit_test is not None:
        data.test_images, data.test_labels = data.test_images[:limit_test], data.test_labels[:limit_test]
    return data


def _standard(data_dir: Path, seed: int) -> ImageData:
    train = load_split(data_dir, "train")
    test = load_split(data_dir, "t10k")
    log.info("standard split from %s: %d train / %d test", data_dir, train.labels.size, test.labels.size)
    return ImageData(
        train.images,
        train.labels,
        test.images,
        test.labels,
        "standard",
        seed,
        data_dir,
        [train.images_path, train.labels_path, test.images_path, test.labels_path],
    )


def _t10k_stratified(data_dir: Path, seed: int) -> ImageData:
    t10k = load_split(data_dir, "t10k")
    n = t10k.labels.size
    test_size = T10K_TEST_SIZE if n == 10000 else max(1, round(n * 0.2))
    tr_idx, te_idx = stratified_split(t10k.labels, test_size, seed)
    log.info(
        "only the t10k pair in %s: fixed stratified split (seed %d) %d train / %d held-out",
        data_dir,
        seed,
        tr_idx.size,
        te_idx.size,
    )
    return ImageData(
        t10k.images[tr_idx],
        t10k.labels[tr_idx],
        t10k.images[te_idx],
        t10k.labels[te_idx],
        "t10k-stratified",
        seed,
        data_dir,
        [t10k.images_path, t10k.labels_path],
    )


def load_mnist(
    data_dir: Path, seed: int, limit_train: int | None = None, limit_test: int | None = None
) -> ImageData:
    """MNIST from ``data_dir`` (kept for callers of the one-model trainer)."""
    return load_images(data_dir, seed, limit_train, limit_test)


MnistData = ImageData


def normalise(images: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """uint8 ``[N,28,28]`` → float32 ``[N,1,28,28]`` with the preprocessing spec's scale/mean/std."""
    x = images.astype(np.float32) * np.float32(spec.scale)
    x = (x - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    return x[:, None, :, :].astype(np.float32, copy=False)
