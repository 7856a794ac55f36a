"""Cancellation and deadlines (issue 11) against a hung real backend (SIGSTOP).

A client that disconnects while its request waits in a batch queue takes it out of the queue;
one whose request was already sent leaves it to complete and be dropped. A client asking for a
short deadline (``X-Request-Timeout``) gets 504 when it passes, not the backend's timeout.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.stack import Backends, Watch, base_url, metric, running
from tests.faults.stack import metrics_url as stack_metrics_url
from tests.support.mnist import Digits

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CANCELLED = "triserve_gateway_cancelled_total"


def _abandon(url: str, png: bytes, after_s: float) -> None:
    """PUT a digit to the (hung) onnx backend and hang up after ``after_s``."""
    with contextlib.suppress(httpx.TimeoutException):
        httpx.put(f"{url}/predictions/mnist", content=png, headers={"X-Backend": "onnx"}, timeout=after_s)


def test_disconnected_clients_leave_the_batch_queue_and_deadlines_give_504(
    backends: Backends, digits: Digits, report: dict[str, object], service_logs: Path
) -> None:
    env = {
        # one batch at a time, and queued requests wait (for companions) until it is done
        "TRISERVE_GATEWAY_MAX_CONCURRENT_BATCHES": "1",
        "TRISERVE_GATEWAY_MAX_QUEUE_DELAY_MS": "10000",
        "TRISERVE_GATEWAY_ATTEMPT_TIMEOUT_MIN_MS": "20000",
        "TRISERVE_GATEWAY_ATTEMPT_TIMEOUT_MAX_MS": "20000",
        "TRISERVE_GATEWAY_REQUEST_TIMEOUT_MS": "60000",
        "TRISERVE_GATEWAY_HEALTH_INTERVAL_S": "30",
    }
    gateway = backends.gateway(service_logs, env)
    png = digits.pngs[7]
    with running(gateway):
        url = base_url(gateway)
        metrics_url = stack_metrics_url(gateway)
        assert httpx.put(f"{url}/predictions/mnist", content=png, headers={"X-Backend": "onnx"}).text == "7"
        backends.signal("onnx", signal.SIGSTOP)
        try:
            first = threading.Thread(target=_abandon, args=(url, png, 3.0))
            first.start()  # sent to onnx: the only batch slot is now taken
            time.sleep(0.5)
            queued = [threading.Thread(target=_abandon, args=(url, png, 1.0)) for _ in range(3)]
            for t in queued:
                t.start()
            for t in [first, *queued]:
                t.join(10)
            gone = Watch(lambda: metric(metrics_url, CANCELLED, stage="batch_queue") >= 3
                         and metric(metrics_url, CANCELLED, stage="sent") >= 1)
            gone.arm()
            cancelled_s = gone.wait(timeout_s=5)
            cancelled = {s: metric(metrics_url, CANCELLED, stage=s) for s in ("batch_queue", "sent")}
            start = time.perf_counter()
            r = httpx.put(f"{url}/predictions/mnist", content=png,
                          headers={"X-Backend": "onnx", "X-Request-Timeout": "300"}, timeout=10)
            deadline_s = time.perf_counter() - start
        finally:
            backends.signal("onnx", signal.SIGCONT)
        status_499 = metric(metrics_url, "triserve_gateway_requests_total", status="499")
        # the abandoned batch completes once the backend runs again; the gateway still serves
        ok = Watch(lambda: httpx.put(f"{url}/predictions/mnist", content=png,
                                     headers={"X-Backend": "onnx"}, timeout=5).text == "7")
        ok.arm()
        recovered_s = ok.wait(timeout_s=15)
        in_flight = metric(metrics_url, "triserve_gateway_admission_in_flight", model="mnist")
    report.update(cancelled=cancelled, status_499=status_499, deadline_status=r.status_code,
                  deadline_s=round(deadline_s, 3), recovered_s=recovered_s)
    assert cancelled_s is not None, report
    assert cancelled["batch_queue"] == 3 and cancelled["sent"] >= 1 and status_499 >= 4, report
    assert r.status_code == 504 and "deadline" in r.json()["message"], report  # TorchServe's shape
    assert deadline_s < 3.0, report  # the client's 300 ms, not the 60 s default nor a backend timeout
    assert recovered_s is not None and in_flight == 0.0, report
