"""The ONNX Runtime service, started for real on the committed model store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.backend_contract import BackendContract

pytestmark = pytest.mark.integration


class TestOnnxService(BackendContract):
    module = "triserve_onnx"
    env_prefix = "TRISERVE_ONNX_"
    platform = "onnxruntime_onnx"
    engine = "CPUExecutionProvider"
    tamper_file = "model.onnx"

    def direct(self, version_dir: Path, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"input": x})
        return np.asarray(logits)
