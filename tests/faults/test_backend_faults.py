"""Dying and hung backends under load (issue 11): kill -9 each backend, SIGSTOP one.

Each test starts its own gateway in front of the shared real backends and drives it with wrk
(16 keep-alive clients, every request a PNG of a 7 that must come back as ``7``).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.faults.load import Load
from tests.faults.stack import BACKENDS, Backends, Watch, base_url, metric, running
from tests.faults.stack import metrics_url as stack_metrics_url
from tests.support.mnist import Digits

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 16
PACE_MS = 50
"""Each client pauses between requests: 16 clients keep the services busy without saturating the
2-core machine, so latencies show fault handling rather than CPU queueing."""
REQUESTS = "triserve_gateway_requests_total"
UP = "triserve_gateway_backend_up"
CALLS = "triserve_gateway_backend_calls_total"


def served_by(metrics_url: str, backend: str) -> float:
    """Successful calls the gateway made to ``backend`` (in rotation and answering)."""
    return metric(metrics_url, CALLS, backend=backend)


@pytest.mark.parametrize("victim", BACKENDS)
def test_kill9_backend_under_load_loses_no_request(
    backends: Backends, digits: Digits, report: dict[str, object], service_logs: Path, tmp_path: Path,
    victim: str,
) -> None:
    # round-robin: every backend carries a third of the traffic, so each kill hits hard
    gateway = backends.gateway(service_logs, {"TRISERVE_GATEWAY_STRATEGY": "round-robin"})
    # TorchServe (JVM + worker) takes longer to come back: the load lasts until well after it is ready
    duration = 75.0 if victim == "torchserve" else 30.0
    with running(gateway):
        url = base_url(gateway)
        metrics_url = stack_metrics_url(gateway)
        with Load(url, digits.pngs[7], 7, tmp_path, connections=CLIENTS, duration_s=duration,
                  pace_ms=PACE_MS) as load:
            time.sleep(5)
            before = served_by(metrics_url, victim)
            assert before > 0, f"{victim} served nothing before the kill"
            killed_at = time.monotonic()
            backends.kill9(victim)
            ready_at = backends.restart(victim)
            baseline = served_by(metrics_url, victim)
            watch = Watch(lambda: served_by(metrics_url, victim) > baseline)
            watch.arm()
            readmitted_s = watch.wait(timeout_s=20)
            result = load.result()
    report.update(
        victim=victim, clients=CLIENTS, load=result.figures(),
        restart_s=round(ready_at - killed_at, 2),
        readmitted_after_ready_s=None if readmitted_s is None else round(readmitted_s, 2),
    )
    assert result.failed == 0, result.figures()
    assert result.ok.count > 0
    assert readmitted_s is not None and readmitted_s <= 10.0, report


def test_sigstopped_backend_costs_under_a_second_and_is_readmitted(
    backends: Backends, digits: Digits, report: dict[str, object], service_logs: Path, tmp_path: Path
) -> None:
    victim = "onnx"  # weight 80 in the default routing: the backend most requests go to
    gateway = backends.gateway(service_logs, {})
    with running(gateway):
        url = base_url(gateway)
        metrics_url = stack_metrics_url(gateway)
        ejected = Watch(lambda: metric(metrics_url, UP, backend=victim) == 0.0, period_s=0.25)
        with Load(url, digits.pngs[7], 7, tmp_path, connections=CLIENTS, duration_s=32,
                  pace_ms=PACE_MS) as load:
            time.sleep(5)
            ejected.arm()
            backends.signal(victim, signal.SIGSTOP)
            try:
                ejected_s = ejected.wait(timeout_s=15)
                time.sleep(max(0.0, 15 - (time.monotonic() - (ejected.armed_at or 0))))
            finally:
                backends.signal(victim, signal.SIGCONT)
            baseline = served_by(metrics_url, victim)
            readmit = Watch(lambda: served_by(metrics_url, victim) > baseline)
            readmit.arm()
            readmitted_s = readmit.wait(timeout_s=11)
            result = load.result()
    failed_share = result.failed / max(1, result.requests)
    report.update(
        victim=victim, clients=CLIENTS, stopped_s=15, load=result.figures(),
        failed_share=round(failed_share, 5),
        ejected_after_s=None if ejected_s is None else round(ejected_s, 2),
        readmitted_after_sigcont_s=None if readmitted_s is None else round(readmitted_s, 2),
    )
    assert result.max_ms <= 1000.0, f"a request took {result.max_ms} ms: {report}"
    assert failed_share <= 0.01, report
    assert ejected_s is not None and ejected_s <= 5.0, report
    assert readmitted_s is not None and readmitted_s <= 10.0, report
