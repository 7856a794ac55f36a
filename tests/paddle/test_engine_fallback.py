"""Engine fallback of the Paddle service: Paddle-TensorRT → Paddle GPU → oneDNN when a tier fails.

No GPU here: the capabilities are declared, and the converter and predictor factory injected into the
runtime fail the GPU tiers the way Paddle does without TensorRT/a device; the CPU tier builds the real
predictor on the committed model, so the engine reported is checked against what really runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.procs import REPO_ROOT
from triserve_common.errors import TriserveError
from triserve_paddle import trt
from triserve_paddle.engines import Capabilities, Tier
from triserve_paddle.runtime import PaddleRuntime, default_predictor_factory
from triserve_paddle.settings import PaddleSettings

GPU_TRT = Capabilities(cuda=True, tensorrt=True, gpu_name="NVIDIA H200")
NO_DEVICE = "(External) CUDA error(100), no CUDA-capable device is detected."


def settings(**kw: object) -> PaddleSettings:
    store = REPO_ROOT / "model_store"
    return PaddleSettings(model_store=store, model_version="1", predictor_pool_size=1, **kw)  # type: ignore[arg-type]


class Predictors:
    """Raises for GPU tiers (no device), real ``create_predictor`` for the CPU tier."""

    def __init__(self) -> None:
        self.tiers: list[Tier] = []

    def __call__(self, tier: Tier, config: Any) -> Any:
        self.tiers.append(tier)
        if tier.device == "gpu":
            raise RuntimeError(NO_DEVICE)
        return default_predictor_factory(tier, config)


def no_tensorrt(model: Path, plan: trt.TrtPlan, prefix: Path) -> None:
    raise OSError("libnvinfer.so: cannot open shared object file: No such file or directory")


def test_failing_gpu_tiers_fall_back_to_onednn_and_report_it() -> None:
    predictors = Predictors()
    rt = PaddleRuntime(settings(), GPU_TRT, create_predictor=predictors, convert=no_tensorrt)
    rt.load()
    # TensorRT failed in the conversion, before any predictor; Paddle GPU at predictor creation
    assert [t.device for t in predictors.tiers] == ["gpu", "cpu"]
    assert rt.engine == "paddle-onednn"
    meta = rt.metadata()
    assert meta["engine"] == "paddle-onednn" and meta["device"] == "cpu"
    assert [f.split(":")[0] for f in meta["fallbacks"]] == ["paddle-tensorrt-fp32", "paddle-gpu"]
    assert "libnvinfer.so" in meta["fallbacks"][0] and NO_DEVICE in meta["fallbacks"][1]
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert rt.infer({"input": x})["logits"].shape == (2, 10)
    rt.unload()


def test_a_conversion_without_tensorrt_ops_is_not_reported_as_tensorrt(tmp_path: Path) -> None:
    """paddle.tensorrt.convert may hand TensorRT no subgraph: that is not a TensorRT engine."""

    def converts_nothing(model: Path, plan: trt.TrtPlan, prefix: Path) -> None:
        prefix.with_suffix(".json").write_text(model.read_text())  # the program, unchanged
        prefix.with_suffix(".pdiparams").write_bytes(model.with_suffix(".pdiparams").read_bytes())

    rt = PaddleRuntime(
        settings(trt_cache_dir=tmp_path), GPU_TRT, create_predictor=Predictors(), convert=converts_nothing
    )
    rt.load()
    fallbacks = rt.metadata()["fallbacks"]
    assert fallbacks[0].startswith("paddle-tensorrt-fp32") and "no subgraph on TensorRT" in fallbacks[0]
    assert rt.engine == "paddle-onednn"
    assert len(list(tmp_path.iterdir())) == 2  # the converted program's folder + its lock file


def test_gpu_required_does_not_fall_back_to_cpu() -> None:
    rt = PaddleRuntime(
        settings(device="gpu"), GPU_TRT, create_predictor=Predictors(), convert=no_tensorrt
    )
    with pytest.raises(TriserveError, match="no paddle engine could be initialised") as info:
        rt.load()
    assert "paddle-tensorrt-fp32" in str(info.value) and "paddle-gpu" in str(info.value)
    assert not rt.ready


def test_a_gpu_tier_that_silently_runs_on_cpu_is_not_reported_as_gpu() -> None:
    """A CPU-only paddle build accepts enable_use_gpu, logs an error and runs on the CPU."""
    rt = PaddleRuntime(settings(tensorrt="off"), GPU_TRT, create_predictor=default_predictor_factory)
    rt.load()
    (fallback,) = rt.metadata()["fallbacks"]
    assert fallback.startswith("paddle-gpu") and "did not enable the GPU" in fallback
    assert rt.engine == "paddle-onednn"


def test_cpu_only_machine_goes_straight_to_onednn() -> None:
    predictors = Predictors()
    rt = PaddleRuntime(settings(), Capabilities(cuda=False, tensorrt=False), create_predictor=predictors)
    rt.load()
    assert [t.device for t in predictors.tiers] == ["cpu"]
    assert rt.engine == "paddle-onednn" and rt.metadata()["fallbacks"] == []
