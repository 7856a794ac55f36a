"""The platform's own service definitions (``triserve_cli.launcher``), started on free ports for tests.

Tests start exactly the commands and environments ``triserve up`` uses, each as a
:class:`ServiceProcess` so a test can stop and restart one service on its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import ServiceProcess, free_port, python_exe
from triserve_cli.launcher import PlatformConfig, service_specs

PORT_FIELDS = (
    "gateway_port",
    "management_port",
    "metrics_port",
    "gateway_grpc_port",
    "onnx_port",
    "paddle_port",
    "ts_inference_port",
    "ts_management_port",
    "ts_metrics_port",
    "ts_grpc_inference_port",
    "ts_grpc_management_port",
)


TEST_GATEWAY_WORKERS = 1
"""Gateway processes of a test platform unless the test asks for others (``gateway_workers=``): one, so
that per-process state (circuit breakers, admission limits, shadow lanes, in-flight counts) is the
whole gateway's, whatever the CPU count. The product default (auto) runs in tests/cli/test_platform_e2e.py,
N=2 in tests/gateway/test_workers.py."""


def free_port_config(run_dir: Path, model_store: Path, **overrides: Any) -> PlatformConfig:
    """The platform's configuration with every port free on 127.0.0.1, :data:`TEST_GATEWAY_WORKERS`
    gateway processes (and ``overrides``)."""
    ports: dict[str, Any] = {name: free_port() for name in PORT_FIELDS}
    return PlatformConfig.from_env(
        run_dir=run_dir, model_store=model_store, host="127.0.0.1",
        **{**ports, "gateway_workers": TEST_GATEWAY_WORKERS, **overrides},
    )


def service_processes(
    config: PlatformConfig,
    log_dir: Path,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 120.0,
) -> dict[str, ServiceProcess]:
    """One (not yet started) process per platform service, in start order; ``extra_env`` per service."""
    extra_env = extra_env or {}
    return {
        spec.name: ServiceProcess(
            spec.name,
            spec.argv,
            ready_url=spec.ready_url,
            log_dir=log_dir,
            env={**spec.env, **extra_env.get(spec.name, {})},
            timeout=timeout,
        )
        for spec in service_specs(config)
    }


def wait_torchserve_worker(
    management: str, proc: ServiceProcess, model: str = "mnist", timeout: float = 120.0
) -> None:
    """TorchServe answers /ping before its model's worker has loaded: wait for a READY worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"torchserve exited:\n{proc.log_tail()}")
        try:
            workers = httpx.get(f"{management}/models/{model}", timeout=5).json()[0]["workers"]
            if workers and all(w["status"] == "READY" for w in workers):
                return
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{model} worker not READY after {timeout}s:\n{proc.log_tail()}")


def wait_torchserve_all(
    management: str, proc: ServiceProcess, timeout: float = 240.0
) -> list[tuple[str, str]]:
    """Wait until TorchServe has registered every archive of its start set and each version has a
    READY worker; returns the (model, version) pairs it serves."""
    deadline = time.monotonic() + timeout
    last = "nothing registered yet"
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"torchserve exited:\n{proc.log_tail()}")
        try:
            names = [m["modelName"] for m in httpx.get(f"{management}/models", timeout=5).json()["models"]]
            entries = [e for n in names for e in httpx.get(f"{management}/models/{n}/all", timeout=5).json()]
            pending = [f"{e['modelName']}/{e['modelVersion']}" for e in entries
                       if not any(w["status"] == "READY" for w in e.get("workers") or [])]
            last = f"registered {len(entries)}, without a READY worker: {pending}"
            if entries and not pending:
                return sorted((e["modelName"], str(e["modelVersion"])) for e in entries)
        except (httpx.HTTPError, KeyError, ValueError, TypeError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"TorchServe not ready after {timeout}s ({last}):\n{proc.log_tail()}")


def start_platform(
    config: PlatformConfig,
    procs: Mapping[str, ServiceProcess],
    torchserve_ready: Callable[[str, ServiceProcess], object] = wait_torchserve_worker,
) -> None:
    """Start ``procs`` (from :func:`service_processes`): TorchServe first (the slowest) with the Python
    backends meanwhile, then the gateway once ``torchserve_ready(management_url, proc)`` returns (by
    default: once its worker is READY). The caller stops them."""
    ts_thread = threading.Thread(target=procs["torchserve"].start)
    ts_thread.start()
    procs["onnx"].start()
    procs["paddle"].start()
    ts_thread.join()
    torchserve_ready(config.url(config.ts_management_port), procs["torchserve"])
    procs["gateway"].start()


def onnx_for_gateway(
    name: str, logs: Path, model_store: Path, max_batch_size: int = 8
) -> tuple[ServiceProcess, Path]:
    """A real ONNX service on a free port (``mnist`` loaded; not started yet) and a routing file in
    ``logs`` that sends ``mnist`` to it alone, for a test that starts a gateway by hand."""

    port = free_port()
    onnx = ServiceProcess(
        name, [python_exe(), "-m", "triserve_onnx"], f"http://127.0.0.1:{port}/v2/health/ready", logs,
        env={"TRISERVE_ONNX_PORT": str(port), "TRISERVE_ONNX_MODEL_STORE": str(model_store),
             "TRISERVE_ONNX_LOAD_MODELS": "mnist"},
    )
    routing = logs / "routing.yaml"
    routing.write_text(one_onnx_routing(port, max_batch_size))
    return onnx, routing


def one_onnx_routing(onnx_port: int, max_batch_size: int = 8) -> str:
    """A gateway routing file with one backend, the ONNX service on ``onnx_port``, for ``mnist``
    (for tests that start a gateway by hand in front of one real runtime)."""
    return f"""
backends:
  onnx: {{protocol: oip-v2, url: "http://127.0.0.1:{onnx_port}", artifact: onnx, timeout_s: 5}}
models:
  mnist:
    strategy: p2c
    backends: [{{name: onnx, weight: 1}}]
    batching: {{enabled: true, max_batch_size: {max_batch_size}, max_queue_delay_ms: 1}}
health: {{interval_s: 0.5, timeout_s: 1}}
"""


def start_gateway_on_a_held_port(
    tmp_path: Path, held: str, workers: int
) -> subprocess.CompletedProcess[bytes]:
    """``python -m triserve_gateway`` with ``workers`` processes, while another socket holds the port
    of setting ``held`` (``port`` or ``grpc_port``) — one willing to share it (``SO_REUSEPORT``, as
    another gateway's process would be). The other listeners get free ports; the run ends as the
    gateway does (it must refuse to start)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        ports = {name: str(free_port()) for name in ("PORT", "MANAGEMENT_PORT", "METRICS_PORT", "GRPC_PORT")}
        ports[held.upper()] = str(holder.getsockname()[1])
        env = {
            **os.environ,
            **{f"TRISERVE_GATEWAY_{name}": value for name, value in ports.items()},
            "TRISERVE_GATEWAY_WORKERS": str(workers),
            "TRISERVE_GATEWAY_LOAD_MODELS": "none",
            "TRISERVE_GATEWAY_MANAGEMENT_KEY_FILE": str(tmp_path / "key"),
            "TMPDIR": str(tmp_path),
        }
        return subprocess.run([python_exe(), "-m", "triserve_gateway"], env=env, capture_output=True,
                              timeout=60, check=False)
