"""The Paddle Inference service, started for real on the committed model store (CPU, oneDNN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integration.backend_contract import BackendContract

pytestmark = pytest.mark.integration


class TestPaddleService(BackendContract):
    module = "triserve_paddle"
    env_prefix = "TRISERVE_PADDLE_"
    platform = "paddle_inference"
    engine = "paddle-onednn"
    tamper_file = "paddle/inference.pdiparams"

    def direct(self, version_dir: Path, x: np.ndarray) -> np.ndarray:
        from paddle import inference as paddle_infer

        config = paddle_infer.Config(
            str(version_dir / "paddle" / "inference.json"),
            str(version_dir / "paddle" / "inference.pdiparams"),
        )
        config.disable_gpu()
        config.disable_glog_info()
        predictor = paddle_infer.create_predictor(config)
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        handle.reshape(list(x.shape))
        handle.copy_from_cpu(x)
        predictor.run()
        return np.asarray(predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu())
