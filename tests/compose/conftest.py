"""The stack of tests/compose: built (offline when no registry answers), up, healthy; `down -v` at the end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose.stack import SERVICES, Build, Stack, build_images, ensure_engine
from tests.support.procs import REPO_ROOT, free_port

REPORT_DIR = REPO_ROOT / "run" / "compose-test"


@pytest.fixture(scope="session")
def report() -> Iterator[dict[str, Any]]:
    """Figures the tests measure; written to run/compose-test/report.json (and printed) at the end."""
    figures: dict[str, Any] = {}
    yield figures
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "report.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\ncompose test figures:", json.dumps(figures, indent=2))


@pytest.fixture(scope="session")
def built(report: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Build:
    ensure_engine()
    build = build_images(tmp_path_factory.mktemp("compose-build"))
    report["build_s"] = round(build.seconds, 1)
    lines = build.output.splitlines()
    wanted = ("triserve/", "base image", "all images")
    report["build_summary"] = [line for line in lines if line.startswith(wanted)]
    return build


@pytest.fixture(scope="session")
def stack(built: Build, mnist_dir: Path, report: dict[str, Any]) -> Iterator[Stack]:
    """The platform from docker-compose.yml (+ the offline override when the build needed it), own project
    name, gateway and Prometheus on free 127.0.0.1 ports; all four services healthy."""
    gateway_port, prometheus_port = free_port(), free_port()
    env = dict(
        os.environ,
        TRISERVE_GATEWAY_PUBLISH=f"127.0.0.1:{gateway_port}",
        TRISERVE_GATEWAY_GRPC_PUBLISH=f"127.0.0.1:{free_port()}",
        TRISERVE_TEST_PROMETHEUS_PORT=str(prometheus_port),
        TRISERVE_MNIST_DIR=str(mnist_dir.resolve()),
    )
    stack = Stack(built.compose, f"triserve-ctest-{os.getpid()}", env, gateway_port, prometheus_port)
    try:
        stack.up()
        report["health_s"] = stack.wait_healthy(SERVICES, since=stack.started_at, deadline_s=600)
        yield stack
    finally:
        stack.down()
