"""schemathesis against the running gateway, from the gateway's own OpenAPI description.

Every operation of the description, >= 1,000 generated requests (examples, coverage, fuzzing and
stateful phases), every schemathesis check but ``positive_data_acceptance``: 0 server errors and
0 responses outside the documented statuses, content types, headers and schemas. (Excluded: a
body that is *schema-valid* — any bytes for an image endpoint, any shape/data pair for OIP v2 —
need not be a valid image or tensor, so 4xx answers to such bodies are right.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile.conftest import LivePlatform

pytestmark = pytest.mark.integration

MIN_REQUESTS = 1000
EXAMPLES_PER_OPERATION = 30


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    live: LivePlatform, tmp_path: Path
) -> None:
    report = tmp_path / "schemathesis.json"
    argv = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{live.gateway}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--workers",
        "1",
        "--seed",
        "42",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    print("\n" + done.stdout[-3000:])
    result = json.loads(report.read_text())
    figures = {
        "operations": result["operations"],
        "test_cases": result["test_cases"],
        "failures": len(result["failures"]),
        "errors": len(result["errors"]),
        "seconds": round(result["running_time"], 1),
    }
    print("schemathesis:", json.dumps(figures))
    assert done.returncode == 0, done.stdout[-6000:]
    assert result["failures"] == [] and result["errors"] == []
    assert result["operations"]["tested"] == result["operations"]["total"]
    assert result["test_cases"]["generated"] >= MIN_REQUESTS
    assert live.backends_up() == {"onnx": 1.0, "paddle": 1.0, "torchserve": 1.0}
