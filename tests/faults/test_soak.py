"""Soak (issue 11): steady traffic for 2 minutes — no error, no growth of RSS or open fds.

``TRISERVE_SOAK_S=900`` runs the 15-minute version (figures in the ``FAULTS`` line).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.load import Load
from tests.faults.probes import ProcSampler
from tests.faults.stack import Backends, base_url, running
from tests.support.mnist import Digits

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARMUP_S = 20.0


def test_soak_keeps_memory_and_fds_flat(
    backends: Backends, digits: Digits, report: dict[str, object], service_logs: Path, tmp_path: Path
) -> None:
    duration = float(os.environ.get("TRISERVE_SOAK_S", "120"))
    gateway = backends.gateway(service_logs, {})
    with running(gateway):
        assert gateway.proc is not None
        url = base_url(gateway)
        with ProcSampler(gateway.proc.pid, period_s=5.0) as proc:
            load = Load(url, digits.pngs[7], 7, tmp_path, connections=16, duration_s=duration, pace_ms=5)
            result = load.start().result()
    start = proc.samples[0][0]
    warm = [s for s in proc.samples if s[0] - start >= WARMUP_S]
    assert len(warm) >= 2, proc.samples
    (_, rss0, fds0), (_, rss1, fds1) = warm[0], warm[-1]
    growth = (rss1 - rss0) / rss0
    report.update(
        duration_s=duration, load=result.figures(),
        rss_kib={"after_warmup": rss0, "end": rss1, "max": proc.max_rss_kib()},
        rss_growth=round(growth, 4), fds={"after_warmup": fds0, "end": fds1},
    )
    assert result.failed == 0, report
    assert growth <= 0.10, report
    assert fds1 - fds0 <= 8, report
