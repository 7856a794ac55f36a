"""A docker compose project of the real images, driven from the tests: build, up, health, down.

Everything goes through the ``docker``/compose command lines the user has; containers are reached only through
ports the compose files publish on 127.0.0.1 (the gateway, and Prometheus via the test override).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import REPO_ROOT

SERVICES = ("gateway", "onnx", "paddle", "torchserve")
BACKENDS = ("onnx", "paddle", "torchserve")
TEST_OVERRIDE = Path(__file__).with_name("docker-compose.test.yml")
ENGINE_SCRIPT = REPO_ROOT / "deploy" / "docker" / "engine.sh"
BUILD_SCRIPT = REPO_ROOT / "deploy" / "docker" / "build-images.sh"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def run(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; a failure raises with its output."""
    result = subprocess.run(list(argv), cwd=REPO_ROOT, env=dict(env) if env is not None else None,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def ensure_engine() -> None:
    """Start the Docker engine if it does not answer (deploy/docker/engine.sh)."""
    if shutil.which("docker") is None:
        raise AssertionError("no docker CLI: make deps (scripts/system-deps.sh test) installs docker.io")
    run([str(ENGINE_SCRIPT)], timeout=120)


@dataclass
class Build:
    """What deploy/docker/build-images.sh did: its output and the compose command it says to use."""

    output: str
    compose: list[str]
    seconds: float


def build_images(workdir: Path) -> Build:
    """Build every image (offline path when no registry answers), the way ``make images`` does."""
    env = dict(os.environ, OFFLINE=os.environ.get("OFFLINE", "auto"),
               COMPOSE_ENV_FILE=str(workdir / "compose-command"))
    if HOST_CA_BUNDLE.is_file():
        env.setdefault("EXTRA_CA", str(HOST_CA_BUNDLE))
    started = time.monotonic()
    result = run([str(BUILD_SCRIPT)], timeout=3600, env=env)
    seconds = time.monotonic() - started
    compose = (workdir / "compose-command").read_text().split()
    return Build(result.stdout, compose, seconds)


@dataclass
class Stack:
    """One compose project (its own name, published ports on 127.0.0.1) of the built images."""

    compose: list[str]
    project: str
    env: dict[str, str]
    gateway_port: int
    prometheus_port: int
    started_at: float = field(default=0.0)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def argv(self, *args: str) -> list[str]:
        return [*self.compose, "-f", str(TEST_OVERRIDE), "-p", self.project, *args]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), timeout=timeout, env=self.env, check=check)

    def up(self) -> None:
        self.started_at = time.monotonic()
        self.run("up", "-d", "--no-build", timeout=900)

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict[str, object]:
        out = run(["docker", "inspect", self.container(service)], timeout=60).stdout
        data: list[dict[str, object]] = json.loads(out)
        return data[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        assert isinstance(state, dict)
        health = state.get("Health") or {}
        return str(health.get("Status", "none")) if state.get("Running") else str(state.get("Status"))

    def wait_healthy(self, services: Iterable[str], since: float, deadline_s: float) -> dict[str, float]:
        """Seconds from ``since`` until each service's own HEALTHCHECK said healthy (polled every 0.5 s)."""
        pending = set(services)
        healthy: dict[str, float] = {}
        end = time.monotonic() + deadline_s
        states: dict[str, str] = {}
        while pending and time.monotonic() < end:
            for service in sorted(pending):
                states[service] = self.health(service)
                if states[service] == "healthy":
                    healthy[service] = round(time.monotonic() - since, 1)
                    pending.discard(service)
            time.sleep(0.5)
        if pending:
            logs = {s: self.run("logs", "--tail", "30", s, check=False).stdout for s in pending}
            raise AssertionError(f"not healthy after {deadline_s}s: {states}\n{logs}")
        return healthy

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, argv in (
            ("containers", ["docker", "ps", "-aq", "--filter", label]),
            ("volumes", ["docker", "volume", "ls", "-q", "--filter", label]),
            ("networks", ["docker", "network", "ls", "-q", "--filter", label]),
        ):
            found[kind] = run(argv, timeout=60).stdout.split()
        return found

    def down(self) -> None:
        self.run("--profile", "train", "down", "-v", "--remove-orphans", timeout=300, check=False)
