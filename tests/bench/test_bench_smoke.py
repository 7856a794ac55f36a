"""``triserve bench --smoke`` end to end: every path on real services, a few seconds per level.

Checks the output's structure (table, JSON, PNG) and that every path answered correctly: the pre-check
(one image per class through every path) and wrk's per-response digit check under load (0 errors).
The targets are reported by the tool, not asserted here (a 2-core CI box says little about them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from triserve_cli.bench.paths import PATHS
from triserve_gateway.cpus import detect_auto_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEVELS = [1, 4]
Smoke = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Smoke:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "TRISERVE_GATEWAY_WORKERS"}  # the product default
    proc = subprocess.run(
        [sys.executable, "-m", "triserve_cli", "bench", "--smoke", "--no-progress", "--out", str(out),
         "--mnist-dir", str(mnist_dir)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    return proc, out


def test_smoke_run_succeeds_with_every_output(smoke: Smoke) -> None:
    proc, out = smoke
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for path in PATHS:
        assert f"| {path.name} | 1 |" in proc.stdout
        assert f"| {path.name} | 4 |" in proc.stdout
    assert "load generator check" in proc.stdout
    assert "FP32 / INT8 = INT8 ratio" in proc.stdout  # mnist v2 vs v1 per backend, same run
    assert (out / "bench.md").read_text().startswith("| path | clients | req/s |")
    with Image.open(out / "bench.png") as png:
        assert png.format == "PNG"
        assert png.size[0] > 800


def test_json_has_every_path_level_and_no_error(smoke: Smoke) -> None:
    _, out = smoke
    doc = json.loads((out / "bench.json").read_text())
    for key in ("machine", "versions", "git", "settings", "paths", "precheck", "generator", "calibration",
                "results", "targets"):
        assert key in doc
    assert doc["settings"]["concurrency"] == LEVELS
    auto = detect_auto_workers()  # the gateways ran the default: auto, recorded as the resolved number
    settings = doc["settings"]
    assert (settings["gateway_workers"], settings["gateway_workers_reason"]) == (auto.count, auto.reason)
    assert doc["versions"]["wrk"].startswith("wrk")
    measured = {(r["path"], r["concurrency"]) for r in doc["results"]}
    assert measured == {(p.name, c) for p in PATHS for c in LEVELS}
    for row in doc["results"]:
        assert row["requests"] > 0, row
        assert row["errors"] == 0, row
        assert row["bad_body"] == row["bad_status"] == 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
        assert row["rps"] > 0
        assert row["services_cpu"] > 0 and row["generator_cpu"] > 0 and row["foreign_cpu"] >= 0, row
    assert {t["name"] for t in doc["targets"]} >= {"errors in every run"}


def test_every_path_named_every_digit(smoke: Smoke) -> None:
    _, out = smoke
    doc = json.loads((out / "bench.json").read_text())
    assert [c["path"] for c in doc["precheck"]] == [p.name for p in PATHS]
    for check in doc["precheck"]:
        assert check["ok"], check
        assert check["labels"] == list(range(10))
        assert check["answers"] == check["labels"]


def test_generator_headroom_is_measured_and_reported(smoke: Smoke) -> None:
    """The 10x headroom is a target the tool reports (ok / NOT ENOUGH); speed is never asserted here."""
    proc, out = smoke
    gen = json.loads((out / "bench.json").read_text())["generator"]
    best = gen["best_path"]
    assert gen["trivial_rps"] > 0 and best["rps"] > 0 and best["path"] in {p.name for p in PATHS}
    assert gen["ratio"] == pytest.approx(gen["trivial_rps"] / best["rps"])
    assert gen["ok"] == (gen["ratio"] >= 10.0)
    verdict = "ok" if gen["ok"] else "NOT ENOUGH"
    assert f"{gen['ratio']:.1f}x headroom ({verdict}, need >= 10x)" in proc.stdout
