"""No model's constants in the serving code: preprocessing, input size and labels come from each
version's manifest. MNIST's (and Fashion-MNIST's) normalisation and the 28x28 size may appear only in
model-specific places: the model store's manifests, the trainer (its per-model specs and network) and
tests. This test greps the gateway, the runtime services, their shared package and the handler."""

from __future__ import annotations

import re
from pathlib import Path

from triserve_common.paths import REPO_ROOT

SERVING = (
    "services/gateway",
    "services/common",
    "services/onnx",
    "services/paddle",
    "services/torchserve",
    "handlers",
)
"""Serving code (with its docs, configs, page and scripts): must hold no model's constants."""
TEXT_SUFFIXES = {
    ".py", ".js", ".html", ".css", ".yaml", ".yml", ".toml", ".sh", ".properties", ".md", ".json",
}
CONSTANTS = re.compile(
    r"0\.1307|0\.3081"  # MNIST mean / std
    r"|0\.2860?\b|0\.3530?\b"  # Fashion-MNIST mean / std
    r"|\b28\s*[x\u00d7*,]\s*(1,\s*)?28\b"  # 28x28, 28 by 28 (multiplication sign), [28, 28], (1, 28, 28)
    r"|\b784\b"  # 28 * 28 flattened
    r"|\bwidth=\"28\"|\bheight=\"28\""  # HTML canvas sized for one model
)


def serving_files() -> list[Path]:
    files = []
    for folder in SERVING:
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            parts = set(path.relative_to(REPO_ROOT).parts)
            if path.is_file() and path.suffix in TEXT_SUFFIXES and not parts & {"__pycache__", "tests"}:
                files.append(path)
    return files


def test_the_pattern_finds_what_it_is_meant_to() -> None:
    for text in ("mean=[0.1307]", "std 0.3081", "0.2860", "[1, 28, 28]", "28x28", "28 \u00d7 28", "784",
                 '<canvas width="28"'):
        assert CONSTANTS.search(text), text
    for text in ("0.13", "280 px", "128", "2028, 2029", "shape[-1]"):
        assert not CONSTANTS.search(text), text


def test_no_model_constants_in_the_serving_code() -> None:
    files = serving_files()
    assert len(files) > 40 and any(p.name == "mnist_handler.py" for p in files)  # the walk sees the code
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if CONSTANTS.search(line)
    ]
    assert not found, "model constants outside model-specific places:\n" + "\n".join(found)
