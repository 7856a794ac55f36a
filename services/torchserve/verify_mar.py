"""Check the ``.mar`` archives TorchServe is about to load against the store's ``manifest.json``.

Run by ``start.sh`` before ``torchserve`` starts (standard library only: the TorchServe image has
no triserve packages)::

    python verify_mar.py <folder holding the .mar files> <TS_MODELS, e.g. mnist=mnist.mar>

Every ``name=file.mar`` of the model list must be listed under the manifest's ``torchserve``
artifact with the same size and sha256. On any problem (manifest missing or malformed, archive
missing, unlisted or different) it prints one line naming the file and exits 1.
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


def _entries(store: Path) -> dict[str, dict[str, Any]]:
    path = store / MANIFEST
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
        entries = {str(f["path"]): {"sha256": str(f["sha256"]), "size": int(f["size_bytes"])} for f in files}
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(
            f"manifest {path} is malformed: no valid artifacts.torchserve.files ({exc!r})"
        ) from None
    return entries


def _archives(models: str) -> list[str]:
    names = []
    for item in filter(None, (m.strip() for m in models.split(","))):
        _, _, archive = item.partition("=")
        names.append(archive or item)
    return names


def verify(store: Path, models: str) -> list[str]:
    """Verify every archive of ``models`` in ``store``; return their names. Raises VerifyError."""
    entries = _entries(store)
    archives = _archives(models)
    if not archives:
        raise VerifyError(f"no model archive to verify in '{models}'")
    for archive in archives:
        path = store / archive
        entry = entries.get(archive)
        if entry is None:
            raise VerifyError(f"{path} is not listed in {store / MANIFEST}: refusing to load it")
        if not path.is_file():
            raise VerifyError(f"archive {path} listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise VerifyError(f"archive {path}: {size} bytes, the manifest says {entry['size']}")
        digest = _sha256(path)
        if digest != entry["sha256"]:
            raise VerifyError(
                f"archive {path}: sha256 {digest} does not match the manifest ({entry['sha256']}); "
                "refusing to load a tampered or corrupt archive"
            )
    return archives


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: verify_mar.py <model store folder> <models, e.g. mnist=mnist.mar>", file=sys.stderr)
        return 2
    try:
        archives = verify(Path(argv[0]), argv[1])
    except VerifyError as exc:
        print(f"torchserve start: {exc}", file=sys.stderr)
        return 1
    print(f"torchserve start: verified {', '.join(archives)} against {Path(argv[0]) / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
