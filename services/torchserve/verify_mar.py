"""Check the ``.mar`` archives TorchServe may load against their ``manifest.json``.

Run by ``start.sh`` before anything is linked for TorchServe (standard library only: the
TorchServe image has no triserve packages)::

    python verify_mar.py <model store>

Every ``<store>/<model>/<version>/*.mar`` must be listed under the ``torchserve`` artifact of
``<store>/<model>/<version>/manifest.json`` with the same size and sha256, and every ``<store>/*.mar``
(a flat folder of archives) under ``<store>/manifest.json``. On any problem (a manifest missing or
malformed, an archive unlisted or different) it prints one line naming the file and exits 1.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class VerifyError(Exception):
    """One line for the operator."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entries(folder: Path) -> dict[str, dict[str, Any]]:
    """The ``torchserve`` files listed by ``folder``'s manifest: path → sha256 and size."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise VerifyError(f"manifest {path} not found: refusing to load unverified archives") from None
    except OSError as exc:
        raise VerifyError(f"manifest {path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise VerifyError(f"manifest {path} is malformed: {exc}") from None
    try:
        files = manifest["artifacts"]["torchserve"]["files"]
        return {str(f["path"]): {"sha256": str(f["sha256"]), "size": int(f["size_bytes"])} for f in files}
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(
            f"manifest {path} is malformed: no valid artifacts.torchserve.files ({exc!r})"
        ) from None


def verify_folder(folder: Path) -> list[Path]:
    """Verify the archives of one folder against its manifest; return them."""
    entries = _entries(folder)
    archives = sorted(folder.glob("*.mar"))
    for archive in archives:
        entry = entries.get(archive.name)
        if entry is None:
            raise VerifyError(f"{archive} is not listed in {folder / MANIFEST}: refusing to load it")
        size = archive.stat().st_size
        if size != entry["size"]:
            raise VerifyError(f"archive {archive}: {size} bytes, the manifest says {entry['size']}")
        digest = _sha256(archive)
        if digest != entry["sha256"]:
            raise VerifyError(
                f"archive {archive}: sha256 {digest} does not match the manifest ({entry['sha256']}); "
                "refusing to load a tampered or corrupt archive"
            )
    return archives


def verify(store: Path) -> list[Path]:
    """Verify every archive TorchServe may load from ``store`` (see module doc); return them."""
    folders = sorted({mar.parent for mar in store.glob("*/*/*.mar")})
    if any(store.glob("*.mar")):
        folders.append(store)
    return [archive for folder in folders for archive in verify_folder(folder)]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: verify_mar.py <model store>", file=sys.stderr)
        return 2
    try:
        archives = verify(Path(argv[0]))
    except VerifyError as exc:
        print(f"torchserve start: {exc}", file=sys.stderr)
        return 1
    print(f"torchserve start: {len(archives)} archive(s) verified against their manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
