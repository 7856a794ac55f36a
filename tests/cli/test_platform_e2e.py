"""``triserve up`` / ``down`` end to end: the real four services on free ports in a temp run dir.

What the README promises: the platform comes up, the printed curl line answers the right digit,
every backend classifies real MNIST digits through the gateway, and ``down`` leaves no process
behind (TorchServe's java frontend and python workers included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.helpers import alive, ps_lines
from tests.support.procs import free_port
from triserve_cli.launcher import marked_processes
from triserve_cli.sample import pick
from triserve_gateway.cpus import detect_auto_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT_FLAGS = (
    "--gateway-port",
    "--management-port",
    "--metrics-port",
    "--gateway-grpc-port",
    "--onnx-port",
    "--paddle-port",
    "--ts-inference-port",
    "--ts-management-port",
    "--ts-metrics-port",
    "--ts-grpc-inference-port",
    "--ts-grpc-management-port",
)


def triserve(*args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triserve_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def port_args() -> tuple[dict[str, int], list[str]]:
    ports = {flag: free_port() for flag in PORT_FLAGS}
    return ports, [part for flag, port in ports.items() for part in (flag, str(port))]


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A temp run dir; whatever happens, ``triserve down`` runs on it at the end."""
    path = tmp_path / "run"
    yield path
    triserve("down", "--run-dir", str(path))


def test_up_predict_status_down(run_dir: Path, mnist_dir: Path, tmp_path: Path) -> None:
    """With the product defaults: among them auto gateway processes (one per usable CPU, at most 4)."""
    ports, args = port_args()
    gateway = f"http://127.0.0.1:{ports['--gateway-port']}"
    env = {k: v for k, v in os.environ.items() if k != "TRISERVE_GATEWAY_WORKERS"}
    up = triserve("up", "--run-dir", str(run_dir), "--timeout", "240", *args, timeout=300, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    curl_line = f"curl -s -T 0.png {gateway}/predictions/mnist"
    assert curl_line in up.stdout

    run_id = json.loads((run_dir / "platform.json").read_text())["run_id"]
    pids = {
        name: int((run_dir / f"{name}.pid").read_text())
        for name in ("torchserve", "onnx", "paddle", "gateway")
    }
    procs = marked_processes(run_id)
    assert {p.pgid for p in procs} == set(pids.values()), procs
    cmdlines = " | ".join(p.cmdline for p in procs)
    for part in ("org.pytorch.serve.ModelServer", "model_service_worker", "triserve_onnx", "triserve_paddle"):
        assert part in cmdlines, cmdlines
    assert all(log.stat().st_size > 0 for log in (run_dir / "logs").glob("*.log"))
    # the gateway: as many processes as auto chose for this machine, all in its process group
    auto = detect_auto_workers()
    followers = [p for p in procs if p.pgid == pids["gateway"] and "multiprocessing.spawn" in p.cmdline]
    assert len(followers) == auto.count - 1, (auto, procs)
    assert f"gateway: {auto.count} process" in (run_dir / "logs" / "gateway.log").read_text()

    status = triserve("status", "--run-dir", str(run_dir), *args)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(", ready") == 4, status.stdout
    # the management API: behind the key `up` generated into the run dir (0600), printed where it is
    key_file = run_dir / "gateway" / "key_file.management"
    assert str(key_file) in up.stdout and oct(key_file.stat().st_mode & 0o777) == "0o600"
    management = f"http://127.0.0.1:{ports['--management-port']}"
    assert httpx.get(f"{management}/models", timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    listed = httpx.get(f"{management}/models", headers=auth, timeout=10).json()["models"]
    assert {m["modelName"] for m in listed} == {"fashion", "mnist"}  # every model of the store, at start
    entries = httpx.get(f"{management}/models/mnist/all", headers=auth, timeout=10).json()
    assert sorted(e["modelVersion"] for e in entries) == ["1", "2"]

    # The README's two lines, as written (sample from ../shared or $TRISERVE_MNIST_DIR).
    sample = triserve("sample", "0", "--data-dir", str(mnist_dir), "-o", str(tmp_path / "0.png"))
    assert sample.returncode == 0, sample.stderr
    assert shutil.which("curl"), "the README's try-it line needs curl: apt-get install -y curl"
    answer = subprocess.run(curl_line, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert answer.stdout == "0", answer
    # Every backend, forced, on a typical image of every digit; the INT8 version on the two that serve it.
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for digit in range(10):
            png = pick(mnist_dir, digit=digit).png()
            for backend in ("onnx", "paddle", "torchserve"):
                response = client.put("/predictions/mnist", content=png, headers={"X-Backend": backend})
                assert response.status_code == 200, (backend, response.text)
                assert (response.text, response.headers["x-backend"]) == (str(digit), backend)
            for backend in ("onnx", "torchserve"):
                response = client.put("/predictions/mnist/2", content=png, headers={"X-Backend": backend})
                assert (response.status_code, response.text) == (200, str(digit)), (backend, response.text)
    # The README's fashion line: an ankle boot answered by its name.
    boot = triserve("sample", "--model", "fashion", "9", "--no-download", "-o", str(tmp_path / "boot.png"))
    assert boot.returncode == 0, boot.stderr
    body = (tmp_path / "boot.png").read_bytes()
    answer = httpx.put(f"{gateway}/predictions/fashion", content=body, timeout=30)
    assert (answer.status_code, answer.text) == (200, '"Ankle boot"'), answer.text

    down = triserve("down", "--run-dir", str(run_dir), *args, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [p for p in procs if alive(p.pid)] == []
    assert [line for line in ps_lines() if str(run_dir) in line] == []
    assert not list(run_dir.glob("*.pid"))
    assert "stopped" in triserve("status", "--run-dir", str(run_dir), *args).stdout


def test_up_reports_the_failing_service_and_leaves_nothing(run_dir: Path) -> None:
    _, args = port_args()
    env = {**os.environ, "TRISERVE_ONNX_LOAD_MODELS": "no-such-model"}
    up = triserve("up", "--run-dir", str(run_dir), "--timeout", "120", *args, timeout=200, env=env)
    assert up.returncode == 1
    assert "onnx exited before the platform was ready" in up.stderr
    assert "no-such-model" in up.stderr  # the log tail names the cause
    assert not list(run_dir.glob("*.pid"))
    assert [line for line in ps_lines() if str(run_dir) in line] == []
