"""MNIST IDX reader (numpy + gzip only; no torch), shared by the trainer, the gateway's tests and the CLI.

IDX format: big-endian header ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes,
then the data. MNIST-style files use dtype code ``0x08`` (uint8): images are ``[N, rows, cols]`` (magic 2051),
labels ``[N]`` (magic 2049). Files may be gzip-compressed (``.gz``) or raw.

Every problem (missing, truncated, wrong magic, inconsistent sizes) raises :class:`IdxError`,
whose message names the file.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

#: Standard MNIST file stems, by split.
STANDARD_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IdxError(ValueError):
    """An IDX file is missing, unreadable or malformed; ``path`` names it."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise IdxError(path, "file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IdxError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxError(path, f"corrupt or truncated gzip data ({exc})") from exc
    return raw


def read_idx(path: Path | str, magic: int | None = None) -> npt.NDArray[np.generic]:
    """Read an IDX file (gzip or raw) into a numpy array of its declared shape.

    ``magic``: the expected 32-bit magic number (e.g. :data:`IMAGES_MAGIC`), checked when given.
    """
    path = Path(path)
    data = _read_bytes(path)
    if magic is not None:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        if found != magic:
            shown = "none (file too short)" if found is None else str(found)
            raise IdxError(path, f"wrong magic number {shown}, expected {magic}")
    if len(data) < 4:
        raise IdxError(path, f"truncated: {len(data)} bytes, no IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IdxError(path, f"wrong magic number 0x{data[:4].hex()} (not an IDX file)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise IdxError(path, f"unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise IdxError(path, "IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(path, f"truncated header: {len(data)} bytes, need {header_len}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header_len
    if body < expected:
        raise IdxError(path, f"truncated: {body} data bytes, header {shape} needs {expected}")
    if body > expected:
        raise IdxError(path, f"{body - expected} trailing bytes after data of shape {shape}")
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_images(path: Path | str) -> npt.NDArray[np.uint8]:
    """MNIST images file → uint8 ``[N, rows, cols]``."""
    path = Path(path)
    arr = read_idx(path, IMAGES_MAGIC)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise IdxError(path, f"expected uint8 images [N,H,W], got {arr.dtype} {arr.shape}")
    return arr.astype(np.uint8, copy=False)


def read_labels(path: Path | str) -> npt.NDArray[np.uint8]:
    """MNIST labels file → uint8 ``[N]`` (values 0..9)."""
    path = Path(path)
    arr = read_idx(path, LABELS_MAGIC)
    if arr.ndim != 1 or arr.dtype != np.uint8:
        raise IdxError(path, f"expected uint8 labels [N], got {arr.dtype} {arr.shape}")
    if arr.size and int(arr.max()) > 9:
        raise IdxError(path, f"label value {int(arr.max())} out of range 0..9")
    return arr.astype(np.uint8, copy=False)


def find_idx_file(data_dir: Path | str, stem: str) -> Path | None:
    """``<stem>.gz`` or ``<stem>`` in ``data_dir`` (gz preferred), or None."""
    data_dir = Path(data_dir)
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.exists():
            return candidate
    return None


@dataclass(frozen=True)
class IdxPair:
    """Images and labels of one MNIST split, with the files they came from."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]
    images_path: Path
    labels_path: Path


def write_idx(path: Path | str, array: npt.NDArray[np.generic], compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip when ``compress`` or the name ends in ``.gz``)."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX code")
    code = codes[native]
    big = np.ascontiguousarray(array, dtype=np.dtype(_DTYPES[code]))
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + big.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def load_split(data_dir: Path | str, split: str) -> IdxPair:
    """Load the ``train`` or ``t10k`` pair from ``data_dir``; sizes must agree."""
    data_dir = Path(data_dir)
    if split not in STANDARD_FILES:
        raise ValueError(f"unknown MNIST split {split!r} (expected one of {sorted(STANDARD_FILES)})")
    img_stem, lbl_stem = STANDARD_FILES[split]
    img_path = find_idx_file(data_dir, img_stem) or data_dir / f"{img_stem}.gz"
    lbl_path = find_idx_file(data_dir, lbl_stem) or data_dir / f"{lbl_stem}.gz"
    images = read_images(img_path)
    labels = read_labels(lbl_path)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(lbl_path, f"{labels.shape[0]} labels but {images.shape[0]} images in {img_path.name}")
    return IdxPair(images=images, labels=labels, images_path=img_path, labels_path=lbl_path)
