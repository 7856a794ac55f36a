"""``triserve sample``: cut one test image out of a model's IDX files and write it as a 28x28 PNG.

    triserve sample 7 > 7.png                        # the most typical 7 of the MNIST test set
    triserve sample 7 --nth 5 > 7.png                # the 6th test image labelled 7, in file order
    triserve sample --index 42 -o 42.png             # test image #42 (its label goes to stderr)
    triserve sample --model fashion 9 > boot.png     # the most typical ankle boot (class 9) of Fashion-MNIST

The image is the data set's own (white on black, 8-bit grayscale), which is what the models expect.
Data (``triserve_common.datasets``): ``--data-dir``, else ``$TRISERVE_MNIST_DIR`` /
``$TRISERVE_FASHION_MNIST_DIR``, else ``../shared/data/<dataset>``, Debian's dataset package, the user cache,
else a download from the data set's mirrors (``--no-download`` to forbid it).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from triserve_common.datasets import DatasetError, find_dataset, get_dataset
from triserve_common.idx import IdxError, load_split

#: Model name → data set it was trained on.
MODEL_DATASETS = {"mnist": "mnist", "fashion": "fashion-mnist"}


def default_data_dir(model: str = "mnist", split: str = "t10k", download: bool = True) -> Path:
    """The data folder of ``model``'s data set (:func:`triserve_common.datasets.find_dataset`)."""
    return find_dataset(MODEL_DATASETS[model], (split,), None, download=download)


@dataclass(frozen=True)
class Sample:
    """One MNIST image: its index in the split, its label and its pixels (uint8 ``[28, 28]``)."""

    index: int
    label: int
    pixels: npt.NDArray[np.uint8]

    def png(self) -> bytes:
        """The image as PNG bytes (8-bit grayscale)."""
        buf = io.BytesIO()
        Image.fromarray(self.pixels, mode="L").save(buf, format="PNG")
        return buf.getvalue()


def typical_index(images: npt.NDArray[np.uint8], labels: npt.NDArray[np.uint8], digit: int) -> int:
    """Index of the image labelled ``digit`` closest (L2) to the mean of all images so labelled.

    The most typical example of a class: a well-trained model recognises it (the first image of a
    class in file order may be an odd one, e.g. t10k's first 3).
    """
    members = np.flatnonzero(labels == digit)
    if not len(members):
        raise ValueError(f"no image labelled {digit}")
    pixels = images[members].reshape(len(members), -1).astype(np.float32)
    distances = ((pixels - pixels.mean(axis=0)) ** 2).sum(axis=1)
    return int(members[int(np.argmin(distances))])


def pick(
    data_dir: Path,
    digit: int | None = None,
    index: int | None = None,
    nth: int | None = None,
    split: str = "t10k",
) -> Sample:
    """The sample at ``index``; or for ``digit``, the ``nth`` (0-based, file order) image so labelled,
    or without ``nth`` the most typical one (:func:`typical_index`).

    Raises ``ValueError`` (with a message for the user) when nothing matches, ``IdxError`` on bad data.
    """
    pair = load_split(data_dir, split)
    count = int(pair.labels.shape[0])
    if index is not None:
        if not 0 <= index < count:
            raise ValueError(f"--index {index} out of range: {split} has {count} images")
        if digit is not None and int(pair.labels[index]) != digit:
            raise ValueError(f"image {index} is a {int(pair.labels[index])}, not a {digit}")
        chosen = index
    elif digit is not None and nth is None:
        chosen = typical_index(pair.images, pair.labels, digit)
    elif digit is not None and nth is not None:
        matches = np.flatnonzero(pair.labels == digit)
        if not 0 <= nth < len(matches):
            raise ValueError(
                f"only {len(matches)} images labelled {digit} in {split}, --nth {nth} out of range"
            )
        chosen = int(matches[nth])
    else:
        raise ValueError("give a digit (0-9) or --index")
    return Sample(index=chosen, label=int(pair.labels[chosen]), pixels=pair.images[chosen])


def _digit(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"digit must be 0-9, got {value}")
    return value


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"triserve sample: {message}\n")
    sys.stderr.flush()
    return code


def _run(args: argparse.Namespace) -> int:
    digit: int | None = args.digit if args.digit is not None else args.digit_opt
    if args.digit is not None and args.digit_opt is not None and args.digit != args.digit_opt:
        return _fail("the positional digit and --digit disagree", 2)
    out: Path | None = args.output
    if out is None and sys.stdout.isatty():
        return _fail("not writing a PNG to a terminal; redirect or use -o FILE", 2)
    dataset = get_dataset(MODEL_DATASETS[args.model])
    try:
        data_dir = find_dataset(dataset.name, (args.split,), args.data_dir, download=not args.no_download)
        sample = pick(data_dir, digit=digit, index=args.index, nth=args.nth, split=args.split)
    except (DatasetError, IdxError, ValueError) as exc:
        hint = f" (set --data-dir or ${dataset.env})" if isinstance(exc, IdxError) else ""
        return _fail(f"{exc}{hint}", 1)
    data = sample.png()
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        out.write_bytes(data)
    name = dataset.labels[sample.label]
    label = str(sample.label) if name == str(sample.label) else f"{sample.label} ({name})"
    sys.stderr.write(f"{args.split} image #{sample.index}, label {label}\n")
    sys.stderr.flush()
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sample`` subcommand."""
    parser = subparsers.add_parser(
        "sample",
        help="write one test image (MNIST digit, Fashion-MNIST item) as a PNG",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("digit", nargs="?", type=_digit, help="class to pick (0-9; fashion: 9 = Ankle boot)")
    parser.add_argument(
        "--model", default="mnist", choices=sorted(MODEL_DATASETS), help="whose test set to cut from (mnist)"
    )
    parser.add_argument("--digit", dest="digit_opt", type=_digit, help="same as the positional digit")
    parser.add_argument("--index", type=int, help="image index in the split (instead of a digit)")
    parser.add_argument(
        "--nth",
        type=int,
        help="with a digit: the nth image so labelled (0-based, file order); default: the most typical",
    )
    parser.add_argument("--split", default="t10k", choices=("t10k", "train"), help="split (t10k)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="IDX folder (default: $TRISERVE_MNIST_DIR / $TRISERVE_FASHION_MNIST_DIR, "
        "../shared/data/<dataset>, the Debian package, the user cache, else a download)",
    )
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.set_defaults(func=_run)
