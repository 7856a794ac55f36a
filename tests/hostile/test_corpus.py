"""The bad-input corpus against the real platform (issue 10).

Pass: no answer >= 500; every refusal a JSON error in the API's shape naming the problem; after
each category, every backend still answers normal requests right and no breaker has opened;
the gateway's RSS grows by at most 100 MB over the whole corpus (its peak is printed); no
backend failure counted; client disconnects counted under 499; no traceback in the gateway log.

``TRISERVE_HOSTILE_SCALE=N`` (default 1) multiplies the generated image variants (the larger
corpus); ``TRISERVE_HOSTILE_REPORT=path.json`` writes the per-category figures there.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.hostile import corpus_http, corpus_inputs, corpus_v2
from tests.hostile.cases import Case, send, verdict
from tests.hostile.conftest import BACKENDS, LivePlatform

pytestmark = pytest.mark.integration

MB = 1024 * 1024
RSS_BUDGET = 100 * MB
FORCED: tuple[str | None, ...] = (None, *BACKENDS)


def categories(live: LivePlatform, scale: int) -> list[tuple[str, Callable[[], list[Case]]]]:
    d = live.digits
    png, label, x = d.pngs[3], int(d.labels[3]), d.x
    return [
        ("images", lambda: corpus_inputs.images(scale)),
        ("bombs", corpus_inputs.decompression_bombs),
        ("animations", lambda: corpus_inputs.animations(png, label)),
        ("multipart", lambda: corpus_inputs.multipart_cases(png)),
        ("bodies", lambda: corpus_inputs.bodies(live.gateway)),
        ("lying-length", lambda: corpus_inputs.lying_lengths(live.gateway, png)),
        ("http-parser", lambda: corpus_inputs.http_parser(live.gateway, png)),
        ("json", lambda: corpus_v2.malformed_json(x)),
        ("fields", lambda: corpus_v2.fields(x)),
        ("shapes", lambda: corpus_v2.shapes(x)),
        ("datatypes", lambda: corpus_v2.datatypes(x)),
        ("nan-inf", lambda: corpus_v2.nonfinite(x, BACKENDS)),
        ("header-length", lambda: corpus_v2.header_lengths(x)),
        ("names", lambda: corpus_http.names_and_versions(png, x)),
        ("topk", lambda: corpus_http.topk(png, label, BACKENDS)),
        ("x-backend", lambda: corpus_http.backends_forced(png, label, BACKENDS)),
        ("x-request-id", lambda: corpus_http.request_ids(png, label, BACKENDS)),
    ]


def forced(case: Case, i: int) -> Case:
    """Each backend forced in turn (``X-Backend``) on cases that name none themselves."""
    backend = FORCED[i % len(FORCED)]
    if backend is None or case.raw is not None or "x-backend" in {k.lower() for k in case.headers}:
        return case
    if "backend=" in case.path:
        return case
    case.headers = {**case.headers, "X-Backend": backend}
    return case


def run_normal(live: LivePlatform, client: httpx.Client, k: int) -> list[str]:
    """Normal requests on every backend: what is wrong with their answers, and with the breakers."""
    d = live.digits
    problems = []
    for case in corpus_http.normal(d.pngs, d.labels.tolist(), d.x, BACKENDS, k):
        why = verdict(case, send(client, live.gateway, case))
        if why:
            problems.append(f"normal {case.name}: {why}")
    up = live.backends_up()
    if any(v != 1.0 for v in up.values()):
        problems.append(f"a backend is down or its breaker open: {up}")
    return problems


def backend_failures(live: LivePlatform) -> float:
    """Backend calls counted as failures (a backend's 4xx, "rejected", is not one)."""
    return sum(
        live.metric("triserve_gateway_backend_failures_total", reason=r)
        for r in ("unavailable", "timeout", "error")
    )


def test_hostile_corpus(live: LivePlatform) -> None:
    scale = int(os.environ.get("TRISERVE_HOSTILE_SCALE", "1"))
    with httpx.Client(timeout=60) as client:
        assert run_normal(live, client, 0) == []
        rss_start, _ = live.rss()
        peak_reset = live.reset_peak_rss()
        failures_before = backend_failures(live)
        disconnects_before = live.metric("triserve_gateway_requests_total", status="499")
        peak = rss_start
        rows, failures, total = [], [], 0
        for n, (category, make) in enumerate(categories(live, scale), start=1):
            started = time.perf_counter()
            cases = make()
            statuses: Counter[str] = Counter()
            for i, case in enumerate(cases):
                answer = send(client, live.gateway, forced(case, i))
                statuses["none" if answer.status is None else f"{answer.status // 100}xx"] += 1
                why = verdict(case, answer)
                if why:
                    failures.append(f"[{category}] {case.name}: {why}")
            failures += [f"[{category}] {p}" for p in run_normal(live, client, n)]
            rss, hwm = live.rss()
            peak = max(peak, rss, hwm if peak_reset else rss)
            total += len(cases)
            rows.append(
                {
                    "category": category,
                    "cases": len(cases),
                    "answers": dict(statuses),
                    "server_errors": statuses["5xx"],
                    "seconds": round(time.perf_counter() - started, 2),
                    "rss_mb": round(rss / MB, 1),
                }
            )
    report = {
        "cases": total,
        "server_errors": sum(r["server_errors"] for r in rows),
        "scale": scale,
        "rss_start_mb": round(rss_start / MB, 1),
        "rss_peak_mb": round(peak / MB, 1),
        "rss_growth_mb": round((peak - rss_start) / MB, 1),
        "categories": rows,
    }
    print("\nhostile corpus:", json.dumps(report, indent=1))
    if os.environ.get("TRISERVE_HOSTILE_REPORT"):
        Path(os.environ["TRISERVE_HOSTILE_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")

    assert not failures, f"{len(failures)} wrong answers:\n" + "\n".join(failures[:40])
    assert report["server_errors"] == 0
    assert total >= 600
    assert peak - rss_start <= RSS_BUDGET, f"gateway RSS grew {report['rss_growth_mb']} MB"
    assert backend_failures(live) == failures_before, "client input was counted against a backend"
    assert live.metric("triserve_gateway_requests_total", status="499") > disconnects_before
    log = live.gateway_log()
    assert "Traceback" not in log and "unhandled error" not in log
    assert "client disconnected after" in log
