"""Overload and slow clients (issue 11): the gateway refuses fast, serves what it admits, stays live.

Overload runs the model on TorchServe alone (the others stay as failover) with admission limits of
1 in flight + 1 queued: capacity is then bounded by TorchServe's round trip rather than by the
gateway's own CPU, so that ten times it — mostly refusals — fits on the 2-core test machine next
to the services. The property under test (refuse at once beyond the limits, never queue without
bound, keep serving what was admitted) does not depend on the limits' size.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.faults.load import Histogram, Load
from tests.faults.probes import Prober, ProcSampler, SlowLoris
from tests.faults.stack import Backends, base_url, running
from tests.support.mnist import Digits

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_overload_at_ten_times_capacity_is_refused_fast(
    backends: Backends, digits: Digits, report: dict[str, object], service_logs: Path, tmp_path: Path
) -> None:
    env = {
        "TRISERVE_GATEWAY_MAX_IN_FLIGHT": "1",
        "TRISERVE_GATEWAY_MAX_QUEUE": "1",
        "TRISERVE_GATEWAY_WEIGHTS": '{"onnx": 0, "paddle": 0, "torchserve": 1}',
    }
    gateway = backends.gateway(service_logs, env)
    with running(gateway):
        url = base_url(gateway)
        assert gateway.proc is not None
        # capacity: as many clients as the limits admit (1 + 1), so none is refused
        png = digits.pngs[7]
        capacity = Load(url, png, 7, tmp_path / "cap", connections=2, duration_s=10).start().result()
        assert capacity.failed == 0, capacity.figures()
        rate = capacity.ok_rate
        # overload: 64 connections, each pausing so that together they offer ~15x capacity
        connections = 64
        pace_ms = max(0, int(connections / (15 * rate) * 1000) - 2)
        with (
            ProcSampler(gateway.proc.pid) as proc,
            Prober(f"{url}/v2/health/live") as live,
            Prober(f"{url}/v2/health/ready", period_s=0.2) as ready,
        ):
            baseline_kib = proc.samples[0][1]
            overload = Load(
                url, png, 7, tmp_path / "over", connections=connections, duration_s=20,
                pace_ms=pace_ms,
            ).start().result()
    offered = overload.rate
    report.update(
        capacity_per_s=round(rate, 1), capacity=capacity.figures(), pace_ms=pace_ms,
        connections=connections, offered_per_s=round(offered, 1),
        offered_x_capacity=round(offered / rate, 1), overload=overload.figures(),
        live=live.summary(), ready=ready.summary(),
        rss_kib={"before": baseline_kib, "max": proc.max_rss_kib()},
    )
    assert offered >= 10 * rate, report
    rejected_p99 = overload.rejected.percentile(99)
    assert rejected_p99 is not None and rejected_p99 <= 50.0, report
    assert overload.retry_after == overload.rejected.count  # every 503 says when to come back
    # what was admitted was answered right: no wrong digit, no other status, no socket error
    assert overload.ok.count > 0 and overload.other.count == 0 and overload.socket_errors == 0, report
    live_p99 = live.summary()["p99_ms"]
    assert isinstance(live_p99, float) and live_p99 <= 100.0 and live.summary()["non_200"] == 0, report
    assert proc.max_rss_kib() <= baseline_kib + 64 * 1024, report  # bounded: no queue grows
    assert ready.summary()["non_200"] == 0, report  # load alone never makes the backends look down


def test_slow_loris_sockets_do_not_stop_normal_clients(
    backends: Backends, digits: Digits, report: dict[str, object], service_logs: Path, tmp_path: Path
) -> None:
    env = {"TRISERVE_GATEWAY_HEADER_TIMEOUT_S": "5", "TRISERVE_GATEWAY_BODY_TIMEOUT_S": "5"}
    gateway = backends.gateway(service_logs, env)
    with running(gateway):
        url = base_url(gateway)
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        png = digits.pngs[7]
        unloaded = Load(url, png, 7, tmp_path / "before", connections=8, duration_s=10).start().result()
        with SlowLoris(parts.hostname, parts.port, count=500, every_s=2.0) as loris:
            time.sleep(3)  # all 500 connected and trickling
            loaded = Load(url, png, 7, tmp_path / "during", connections=8, duration_s=10).start().result()
            time.sleep(3)
        # unloaded again: the shared machine drifts, so the baseline brackets the loaded run
        after = Load(url, png, 7, tmp_path / "after", connections=8, duration_s=10).start().result()
    baseline = Histogram({k: unloaded.ok.buckets.get(k, 0) + after.ok.buckets.get(k, 0)
                          for k in unloaded.ok.buckets.keys() | after.ok.buckets.keys()})
    before, during = baseline.percentile(50), loaded.ok.percentile(50)
    report.update(
        unloaded=unloaded.figures(), with_slow_loris=loaded.figures(), unloaded_after=after.figures(),
        baseline_p50_ms=before, loris=loris.figures(),
    )
    assert unloaded.failed == 0 and loaded.failed == 0 and after.failed == 0, report
    assert before is not None and during is not None and during <= 2 * before, report
    assert loris.peak_open >= 450, report  # the gateway really held that many slow sockets
    # and its timeouts cut them: slow headers closed, slow bodies answered 408
    assert loris.closed_in_headers > 0 and loris.answered_in_body.get("408", 0) > 0, report
