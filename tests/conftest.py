"""Shared fixtures: the MNIST data in ../shared, the committed model store, a log folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.procs import REPO_ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST IDX files: $TRISERVE_MNIST_DIR or ../shared/data/mnist. Missing data fails, never skips."""
    path = Path(os.environ.get("TRISERVE_MNIST_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist"))
    if not (path / "t10k-images-idx3-ubyte.gz").exists() and not (path / "t10k-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST t10k files not found in {path} (set TRISERVE_MNIST_DIR)")
    return path


@pytest.fixture(scope="session")
def model_store() -> Path:
    """The committed model store."""
    return REPO_ROOT / "model_store"


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for the logs of services started by integration tests."""
    return tmp_path_factory.mktemp("service-logs")
