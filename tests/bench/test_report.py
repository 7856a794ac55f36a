"""The benchmark's targets, PASS/MISS lines and traffic split (pure), and the tuned TorchServe's config."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from triserve_cli.bench import report, targets
from triserve_cli.bench.stack import QUIET_LOG_CONFIG, TorchServeTuning, stock_model_store
from triserve_common.manifest import read_manifest, verify_artifact


def row(path: str, concurrency: int, rps: float, p50: float = 1.0, p99: float = 10.0, errors: int = 0,
        backends: dict[str, int] | None = None) -> dict[str, Any]:
    return {"path": path, "concurrency": concurrency, "rps": rps, "p50_ms": p50, "p99_ms": p99,
            "errors": errors, "backends": backends or {}}


RUN = [
    row("torchserve-stock", 32, 400.0),
    row("torchserve-tuned", 32, 900.0),
    row("onnx", 1, 1000.0, p50=0.70),
    row("gateway-onnx", 1, 500.0, p50=1.50),
    row("gateway-onnx", 32, 2400.0),
    row("gateway-auto", 32, 2300.0, backends={"onnx": 990, "paddle": 10}),
    row("gateway-png", 32, 2100.0, p99=40.0, backends={"onnx": 3}),
    row("gateway-batching-on", 64, 2000.0),
    row("gateway-batching-off", 64, 500.0, errors=1),
]


def by_name(targets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in targets}


def test_targets_are_the_issue_figures_of_one_run() -> None:
    t = by_name(targets.targets(RUN))
    assert t["gateway-png vs torchserve-stock, req/s at c=32"]["value"] == pytest.approx(5.25)
    assert t["gateway-png vs torchserve-stock, req/s at c=32"]["met"] is True
    assert t["gateway-png p99 at c=32"]["met"] is True
    assert t["gateway-auto vs gateway-onnx, req/s at c=32"]["value"] == pytest.approx(2300 / 2400)
    assert t["gateway added latency, p50 at c=1 (onnx)"]["value"] == pytest.approx(0.80)
    assert t["dynamic batching on vs off, req/s at c=64"]["value"] == pytest.approx(4.0)
    assert t["gateway-png vs torchserve-tuned, req/s at c=32"]["met"] is False  # 2.33x < 2.5x
    assert t["errors in every run"]["met"] is False
    assert t["gateway-png p99 at c=64"]["value"] is None and t["gateway-png p99 at c=64"]["threshold"] is None


def test_verdicts_print_pass_miss_and_missing_runs() -> None:
    lines = report.verdicts(targets.targets(RUN[:-2])).splitlines()
    assert "PASS  gateway-png vs torchserve-stock, req/s at c=32: 5.25x" in lines[0]
    assert any(line.startswith("MISS  gateway-png vs torchserve-tuned") for line in lines)
    assert any(line.startswith("n/a   dynamic batching on vs off") for line in lines)
    assert not any("c=64" in line and "gateway-png" in line for line in lines)  # figures without a goal


def test_split_table_gives_shares_of_the_routed_paths_only() -> None:
    table = report.split_table(RUN)
    assert "| path (default routing) | clients | onnx | paddle |" in table
    assert "| gateway-auto | 32 | 99.0 % | 1.0 % |" in table
    assert "| gateway-png | 32 | 100.0 % | 0.0 % |" in table
    assert "gateway-onnx" not in table
    assert "no routed gateway path" in report.split_table(RUN[:3])


def test_tuning_parses_partial_specs_and_refuses_nonsense() -> None:
    assert TorchServeTuning.parse("") == TorchServeTuning()
    tuned = TorchServeTuning.parse("workers=1, batch_size=16")
    default_delay = TorchServeTuning().max_batch_delay_ms
    assert (tuned.workers, tuned.batch_size, tuned.max_batch_delay_ms) == (1, 16, default_delay)
    for bad in ("workers", "threads=2", "workers=two", "workers=0", "max_batch_delay_ms=-1"):
        with pytest.raises(ValueError):
            TorchServeTuning.parse(bad)
    assert TorchServeTuning.env()["TS_LOG_CONFIG"] == str(QUIET_LOG_CONFIG) and QUIET_LOG_CONFIG.is_file()


def test_tuned_store_rewrites_the_archive_config_and_still_verifies(
    tmp_path: Path, model_store: Path
) -> None:
    tuning = TorchServeTuning(workers=2, batch_size=16, max_batch_delay_ms=7)
    target = stock_model_store(model_store, tmp_path / "tuned", model_config=tuning.model_config())
    (version_dir,) = (target / "mnist").iterdir()
    with zipfile.ZipFile(version_dir / "mnist.mar") as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
        assert "mnist_handler.py" in " ".join(mar.namelist())
    assert config == {"minWorkers": 2, "maxWorkers": 2, "batchSize": 16, "maxBatchDelay": 7,
                      "responseTimeout": 120}
    manifest = read_manifest(version_dir)
    assert verify_artifact(manifest, version_dir, "torchserve")  # sha256 of the rewritten archive
    assert json.loads((version_dir / "manifest.json").read_text())["name"] == "mnist"
