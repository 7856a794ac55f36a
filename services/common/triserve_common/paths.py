"""Where the checkout is: the one helper for the repository root (no ``parents[N]`` elsewhere)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
"""The repository root when the packages are installed from a checkout (``pip install -e``):
``<root>/services/common/triserve_common/paths.py``."""


def repo_root() -> Path:
    """The repository root (see :data:`REPO_ROOT`)."""
    return REPO_ROOT
