"""Fixtures of the fault tests: the real backends (started once), MNIST digits, a report sink."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.stack import Backends, start_backends
from tests.support.mnist import Digits, one_per_digit
from tests.support.stack import free_port_config
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def backends(
    model_store: Path, service_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backends]:
    """TorchServe, the ONNX and the Paddle service on free ports, shared by every fault test.

    A test that kills or stops a backend brings it back before it ends."""
    config = free_port_config(tmp_path_factory.mktemp("faults-run"), model_store)
    started = start_backends(config, service_logs)
    try:
        yield started
    finally:
        for proc in started.procs.values():
            proc.stop()


@pytest.fixture(scope="session")
def digits(mnist_dir: Path, model_store: Path) -> Digits:
    return one_per_digit(mnist_dir, read_manifest(model_store / "mnist" / "1"))


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    """Figures a test measured: printed as one ``FAULTS {json}`` line (``pytest -s`` shows it) and
    appended to ``$TRISERVE_FAULTS_REPORT`` when set."""
    figures: dict[str, object] = {}
    yield figures
    line = json.dumps({"test": request.node.name, **figures}, default=str)
    print(f"\nFAULTS {line}")
    target = os.environ.get("TRISERVE_FAULTS_REPORT")
    if target:
        with Path(target).open("a") as fh:
            fh.write(line + "\n")
