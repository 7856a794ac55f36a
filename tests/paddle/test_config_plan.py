"""Paddle engine tiers and Config plans: GPU/TensorRT decisions (pure logic) and the CPU plan applied
to a real Config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from paddle import inference as paddle_infer

from triserve_common.errors import TriserveError
from triserve_common.manifest import TensorSpec
from triserve_paddle.engines import CPU, GPU, TENSORRT, Capabilities, engine_label, plan_tiers
from triserve_paddle.runtime import ConfigCall, engine_name, plan_config
from triserve_paddle.settings import PaddleSettings

INPUTS = [TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 28, 28])]
GPU_TRT = Capabilities(cuda=True, tensorrt=True)
GPU_ONLY = Capabilities(cuda=True, tensorrt=False)
CPU_ONLY = Capabilities(cuda=False, tensorrt=False)


def settings(**kw: object) -> PaddleSettings:
    return PaddleSettings(model_store=Path("/nonexistent"), **kw)  # type: ignore[arg-type]


def calls_by_name(plan: list[ConfigCall]) -> dict[str, ConfigCall]:
    return {call.method: call for call in plan}


def test_auto_is_the_default() -> None:
    s = PaddleSettings()
    assert (s.device, s.tensorrt) == ("auto", "auto")


@pytest.mark.parametrize(
    ("device", "tensorrt", "caps", "expected"),
    [
        # auto: every tier this machine offers, best first, down to the CPU
        ("auto", "auto", GPU_TRT, [TENSORRT, GPU, CPU]),
        ("auto", "auto", GPU_ONLY, [GPU, CPU]),
        ("auto", "auto", CPU_ONLY, [CPU]),
        ("auto", "off", GPU_TRT, [GPU, CPU]),
        ("cpu", "on", GPU_TRT, [CPU]),
        # gpu: required, no CPU fallback
        ("gpu", "auto", GPU_TRT, [TENSORRT, GPU]),
        ("gpu", "off", GPU_TRT, [GPU]),
        # tensorrt=on: required, nothing slower
        ("auto", "on", GPU_TRT, [TENSORRT]),
    ],
)
def test_plan_tiers(device: str, tensorrt: str, caps: Capabilities, expected: list[object]) -> None:
    assert plan_tiers(settings(device=device, tensorrt=tensorrt), caps) == expected


@pytest.mark.parametrize(
    ("device", "tensorrt", "caps"),
    [("gpu", "auto", CPU_ONLY), ("auto", "on", GPU_ONLY), ("gpu", "on", CPU_ONLY)],
)
def test_required_unavailable_engine_refuses_to_start(device: str, tensorrt: str, caps: Capabilities) -> None:
    with pytest.raises(TriserveError):
        plan_tiers(settings(device=device, tensorrt=tensorrt), caps)


def test_engine_labels() -> None:
    assert engine_label(TENSORRT, settings()) == "paddle-tensorrt-fp32"
    assert engine_label(TENSORRT, settings(trt_precision="fp16")) == "paddle-tensorrt-fp16"
    assert engine_label(GPU, settings()) == "paddle-gpu"
    assert engine_label(CPU, settings()) == "paddle-onednn"
    assert engine_label(CPU, settings(onednn=False)) == "paddle-cpu"


def test_gpu_plan() -> None:
    calls = calls_by_name(plan_config(settings(gpu_memory_mb=512, gpu_device_id=1), "gpu"))
    assert calls["enable_use_gpu"].args == (512, 1)
    # TensorRT lives in the converted program, not in Config calls (they do not apply to PIR models)
    assert not {"enable_tensorrt_engine", "set_trt_dynamic_shape_info", "disable_gpu"} & calls.keys()
    assert "enable_onednn" not in calls


def _signature_params(method: str) -> set[str]:
    doc = getattr(paddle_infer.Config, method).__doc__ or ""
    first = doc.strip().splitlines()[0]
    return set(re.findall(r"(\w+):", first.split("(", 1)[1])) - {"self"}


def test_gpu_plan_calls_exist_on_this_paddle_with_these_keywords() -> None:
    """The GPU path cannot run on the CPU wheel: check method names and keyword names instead."""
    plan = plan_config(settings(), "gpu")
    for call in plan:
        assert hasattr(paddle_infer.Config, call.method), call.method
        unknown = set(call.kwargs) - _signature_params(call.method)
        assert not unknown, f"{call.method}: unknown keywords {unknown}"


def test_cpu_plan_applied_to_a_real_config() -> None:
    plan = plan_config(settings(cpu_threads=3), "cpu")
    config = paddle_infer.Config()
    for call in plan:
        getattr(config, call.method)(*call.args, **call.kwargs)
    assert not config.use_gpu()
    assert config.cpu_math_library_num_threads() == 3
    assert engine_name(config) == "paddle-onednn"
    no_onednn = paddle_infer.Config()
    for call in plan_config(settings(onednn=False), "cpu"):
        getattr(no_onednn, call.method)(*call.args, **call.kwargs)
    assert engine_name(no_onednn) == "paddle-cpu"


def test_settings_validate_batch_range() -> None:
    with pytest.raises(ValueError):
        settings(trt_min_batch=300)
    assert settings(trt_opt_batch=1000).trt_batch_range() == (1, 256, 256)
