"""The gateway as two processes (``TRISERVE_GATEWAY_WORKERS=2``), real processes on free ports.

A real ONNX service behind a gateway started as ``triserve-gateway`` does it: both processes serve
the inference port, a management change on the primary is served by every process, the metrics
listener sums both processes' counts, and a follower that dies is started again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.encode import png
from tests.support.procs import ServiceProcess, python_exe
from tests.support.stack import onnx_for_gateway, start_gateway_on_a_held_port
from triserve_common.ports import free_port

KEY = "workers-test-key"


@dataclass
class Gateway:
    proc: ServiceProcess
    inference: str
    management: str
    metrics: str

    def predict(self, path: str, image: bytes) -> httpx.Response:
        """One request on a new connection (the kernel picks the process per connection)."""
        with httpx.Client(timeout=10) as client:
            return client.put(f"{self.inference}{path}", content=image)

    def worker_responses(self) -> dict[str, float]:
        return {
            s.labels["worker"]: s.value
            for s in families(self.metrics)["triserve_gateway_worker_responses"].samples
            if s.name.endswith("_total")
        }


def digit_png(seed: int) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 255, (28, 28), dtype=np.uint8))


def families(base: str) -> dict[str, object]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def gateway(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("workers")
    onnx, routing = onnx_for_gateway("onnx-workers", logs, model_store, max_batch_size=8)
    port, management, metrics = free_port(), free_port(), free_port()
    proc = ServiceProcess(
        "gateway-workers", [python_exe(), "-m", "triserve_gateway"], f"http://127.0.0.1:{port}/ping", logs,
        env={
            "TRISERVE_GATEWAY_WORKERS": "2",
            "TRISERVE_GATEWAY_PORT": str(port),
            "TRISERVE_GATEWAY_MANAGEMENT_PORT": str(management),
            "TRISERVE_GATEWAY_METRICS_PORT": str(metrics),
            "TRISERVE_GATEWAY_GRPC_PORT": str(free_port()),
            "TRISERVE_GATEWAY_ROUTING_FILE": str(routing),
            "TRISERVE_GATEWAY_MODEL_STORE": str(model_store),
            "TRISERVE_GATEWAY_LOAD_MODELS": "mnist:1",
            "TRISERVE_GATEWAY_MANAGEMENT_KEY": KEY,
        },
    )
    with onnx, proc:
        gw = Gateway(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{management}",
                     f"http://127.0.0.1:{metrics}")
        wait_for(lambda: set(gw.worker_responses()) >= {"0", "1"} or probe(gw), "both processes ready")
        yield gw


def probe(gw: Gateway) -> bool:
    """A few pings on new connections (a follower answers once its own lifespan is done)."""
    for _ in range(8):
        with httpx.Client(timeout=5) as client:
            client.get(f"{gw.inference}/ping")
    return False


def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout}s")


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_both_processes_serve_and_the_metrics_listener_sums_them(gateway: Gateway) -> None:
    image = digit_png(7)
    before = gateway.worker_responses()
    ok = [gateway.predict("/predictions/mnist", image).status_code for _ in range(40)]
    assert ok == [200] * 40
    after = gateway.worker_responses()
    served = {w: after.get(w, 0) - before.get(w, 0) for w in after}
    assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served  # the kernel spread the connections
    requests = families(gateway.metrics)["triserve_gateway_requests"].samples
    ok_total = sum(s.value for s in requests if s.name.endswith("_total") and s.labels["status"] == "200")
    assert ok_total >= 40  # both processes' counts, summed
    ts = families(gateway.metrics)
    assert ts["ts_inference_requests"].type == "counter"
    assert ts["Requests2XX"].type == "unknown"
    assert sum(s.value for s in ts["ts_inference_requests"].samples) == ok_total


def test_a_management_change_is_served_by_every_process(gateway: Gateway) -> None:
    image = digit_png(3)
    assert gateway.predict("/predictions/mnist/2", image).status_code == 404
    r = httpx.post(f"{gateway.management}/models", params={"url": "mnist/2", "synchronous": "true"},
                   headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    # synchronous: every process serves it once the answer is back, whichever gets the connection
    codes = [gateway.predict("/predictions/mnist/2", image).status_code for _ in range(30)]
    assert codes == [200] * 30
    r = httpx.put(f"{gateway.management}/models/mnist/2/set-default", headers=auth(), timeout=30)
    assert r.status_code == 200, r.text
    served = [gateway.predict("/predictions/mnist", image).headers.get("X-Model-Version") for _ in range(30)]
    assert served == ["2"] * 30
    r = httpx.put(f"{gateway.management}/models/mnist/1/set-default", headers=auth(), timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.delete(f"{gateway.management}/models/mnist/2", headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    codes = [gateway.predict("/predictions/mnist/2", image).status_code for _ in range(30)]
    assert codes == [404] * 30


def test_a_follower_that_dies_is_started_again(gateway: Gateway) -> None:
    follower = [p for p in children(gateway.proc.proc.pid)]  # type: ignore[union-attr]
    assert len(follower) == 1, follower
    os.kill(follower[0], signal.SIGKILL)
    wait_for(lambda: children(gateway.proc.proc.pid) not in ([], follower), "a new follower", 60)  # type: ignore[union-attr]
    image = digit_png(1)
    before = gateway.worker_responses().get("1", 0)

    def follower_serves() -> bool:
        gateway.predict("/predictions/mnist", image)
        return gateway.worker_responses().get("1", 0) > before

    wait_for(follower_serves, "the new follower serving", 60)


def children(pid: int) -> list[int]:
    """The gateway's follower processes (its children that are gateway processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def test_a_held_inference_port_stops_the_start(tmp_path: Path) -> None:
    """SO_REUSEPORT must not make two gateways share a port: the primary binds it exclusively first."""
    done = start_gateway_on_a_held_port(tmp_path, "port", workers=2)
    assert done.returncode != 0
    assert b"Address already in use" in done.stderr
    assert not list(tmp_path.glob("triserve-gateway-*"))  # its run directory is gone with it
