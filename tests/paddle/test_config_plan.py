"""Paddle Config plans: GPU/TensorRT decisions (pure logic) and the CPU plan applied to a real Config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from paddle import inference as paddle_infer

from triserve_common.errors import TriserveError
from triserve_common.manifest import TensorSpec
from triserve_paddle.runtime import (
    Capabilities,
    ConfigCall,
    choose_engine,
    engine_name,
    plan_config,
)
from triserve_paddle.settings import PaddleSettings

INPUTS = [TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 28, 28])]
GPU_TRT = Capabilities(cuda=True, tensorrt=True)
GPU_ONLY = Capabilities(cuda=True, tensorrt=False)
CPU_ONLY = Capabilities(cuda=False, tensorrt=False)


def settings(**kw: object) -> PaddleSettings:
    return PaddleSettings(model_store=Path("/nonexistent"), **kw)  # type: ignore[arg-type]


def calls_by_name(plan: list[ConfigCall]) -> dict[str, ConfigCall]:
    return {call.method: call for call in plan}


@pytest.mark.parametrize(
    ("device", "tensorrt", "caps", "expected"),
    [
        ("auto", "auto", GPU_TRT, ("gpu", True)),
        ("auto", "auto", GPU_ONLY, ("gpu", False)),
        ("auto", "auto", CPU_ONLY, ("cpu", False)),
        ("auto", "off", GPU_TRT, ("gpu", False)),
        ("cpu", "on", GPU_TRT, ("cpu", False)),
        ("gpu", "auto", GPU_TRT, ("gpu", True)),
    ],
)
def test_choose_engine(device: str, tensorrt: str, caps: Capabilities, expected: tuple[str, bool]) -> None:
    assert choose_engine(settings(device=device, tensorrt=tensorrt), caps) == expected


@pytest.mark.parametrize(
    ("device", "tensorrt", "caps"), [("gpu", "auto", CPU_ONLY), ("auto", "on", GPU_ONLY)]
)
def test_forced_unavailable_engine_refuses_to_start(device: str, tensorrt: str, caps: Capabilities) -> None:
    with pytest.raises(TriserveError):
        choose_engine(settings(device=device, tensorrt=tensorrt), caps)


def test_gpu_tensorrt_plan() -> None:
    s = settings(
        gpu_memory_mb=512,
        gpu_device_id=1,
        trt_precision="fp16",
        trt_opt_batch=16,
        max_batch_size=64,
        trt_cache_dir=Path("/tmp/trt"),
    )
    plan = plan_config(s, "gpu", True, INPUTS)
    calls = calls_by_name(plan)
    assert calls["enable_use_gpu"].args == (512, 1)
    shapes = calls["set_trt_dynamic_shape_info"].kwargs
    assert shapes == {
        "min_input_shape": {"input": [1, 1, 28, 28]},
        "max_input_shape": {"input": [64, 1, 28, 28]},
        "optim_input_shape": {"input": [16, 1, 28, 28]},
    }
    trt = calls["enable_tensorrt_engine"].kwargs
    assert trt["precision_mode"] == paddle_infer.PrecisionType.Half
    assert trt["max_batch_size"] == 64 and trt["use_static"] is True and trt["use_calib_mode"] is False
    assert calls["set_optim_cache_dir"].args == ("/tmp/trt",)
    assert "disable_gpu" not in calls and "enable_onednn" not in calls
    # dynamic shape info must be set before the engine is enabled
    names = [c.method for c in plan]
    assert names.index("set_trt_dynamic_shape_info") < names.index("enable_tensorrt_engine")


def test_gpu_plan_without_tensorrt_and_fp32_default() -> None:
    calls = calls_by_name(plan_config(settings(), "gpu", False, INPUTS))
    assert "enable_use_gpu" in calls and "enable_tensorrt_engine" not in calls
    trt = calls_by_name(plan_config(settings(), "gpu", True, INPUTS))["enable_tensorrt_engine"]
    assert trt.kwargs["precision_mode"] == paddle_infer.PrecisionType.Float32
    assert trt.kwargs["use_static"] is False


def test_opt_batch_is_clamped_into_the_range() -> None:
    calls = calls_by_name(plan_config(settings(max_batch_size=8, trt_opt_batch=32), "gpu", True, INPUTS))
    assert calls["set_trt_dynamic_shape_info"].kwargs["optim_input_shape"] == {"input": [8, 1, 28, 28]}


def test_tensorrt_needs_fixed_non_batch_dims() -> None:
    dynamic = [TensorSpec(name="input", datatype="FP32", shape=[-1, 1, -1, -1])]
    with pytest.raises(TriserveError, match="non-batch dimension"):
        plan_config(settings(), "gpu", True, dynamic)


def _signature_params(method: str) -> set[str]:
    doc = getattr(paddle_infer.Config, method).__doc__ or ""
    first = doc.strip().splitlines()[0]
    return set(re.findall(r"(\w+):", first.split("(", 1)[1])) - {"self"}


def test_gpu_plan_calls_exist_on_this_paddle_with_these_keywords() -> None:
    """The GPU path cannot run on the CPU wheel: check method names and keyword names instead."""
    plan = plan_config(settings(trt_cache_dir=Path("/tmp/x")), "gpu", True, INPUTS)
    for call in plan:
        assert hasattr(paddle_infer.Config, call.method), call.method
        unknown = set(call.kwargs) - _signature_params(call.method)
        assert not unknown, f"{call.method}: unknown keywords {unknown}"


def test_cpu_plan_applied_to_a_real_config() -> None:
    plan = plan_config(settings(cpu_threads=3), "cpu", False, INPUTS)
    config = paddle_infer.Config()
    for call in plan:
        getattr(config, call.method)(*call.args, **call.kwargs)
    assert not config.use_gpu()
    assert config.cpu_math_library_num_threads() == 3
    assert engine_name(config) == "paddle-onednn"
    no_onednn = paddle_infer.Config()
    for call in plan_config(settings(onednn=False), "cpu", False, INPUTS):
        getattr(no_onednn, call.method)(*call.args, **call.kwargs)
    assert engine_name(no_onednn) == "paddle-cpu"


def test_settings_validate_batch_range() -> None:
    with pytest.raises(ValueError):
        settings(trt_min_batch=300)
    assert settings(trt_opt_batch=1000).trt_batch_range() == (1, 256, 256)
