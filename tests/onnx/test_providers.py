"""ONNX Runtime provider selection (pure logic: which providers, in which order, with which options)."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve_common.manifest import TensorSpec
from triserve_onnx.engines import plan_attempts, provider_chain, trt_batch_profile, trt_cache_dir
from triserve_onnx.runtime import select_providers, session_options
from triserve_onnx.settings import OnnxSettings

INPUTS = [TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 28, 28])]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def settings(**kw: object) -> OnnxSettings:
    return OnnxSettings(model_store=Path("/nonexistent"), **kw)  # type: ignore[arg-type]


def test_default_order_on_a_gpu_build() -> None:
    chosen = select_providers(settings(trt_fp16=True, max_batch_size=64), GPU_BUILD, INPUTS)
    assert [name for name, _ in chosen] == GPU_BUILD
    trt = chosen[0][1]
    assert trt["trt_fp16_enable"] is True and trt["device_id"] == 0
    assert trt["trt_profile_min_shapes"] == "input:1x1x28x28"
    assert trt["trt_profile_opt_shapes"] == "input:32x1x28x28"
    assert trt["trt_profile_max_shapes"] == "input:64x1x28x28"
    assert chosen[1] == ("CUDAExecutionProvider", {"device_id": 0})


def test_unavailable_providers_are_skipped_cpu_always_last() -> None:
    chosen = select_providers(settings(), ["AzureExecutionProvider", "CPUExecutionProvider"], INPUTS)
    assert chosen == [("CPUExecutionProvider", {})]
    chosen = select_providers(settings(providers="CUDAExecutionProvider"), GPU_BUILD, INPUTS)
    assert [name for name, _ in chosen] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_providers_from_env_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRISERVE_ONNX_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("TRISERVE_ONNX_INTRA_OP_THREADS", "3")
    s = OnnxSettings()
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"] and s.port == 8001
    so = session_options(s)
    assert so.intra_op_num_threads == 3


def test_auto_is_the_default_and_expands_to_tensorrt_cuda_cpu() -> None:
    assert settings().providers == ["auto"]
    assert provider_chain(["auto"], GPU_BUILD) == GPU_BUILD
    assert provider_chain(["auto"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == GPU_BUILD[1:]
    assert provider_chain(["auto"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    # explicit names keep their order; CPU is moved last and never repeated
    chain = provider_chain(["CPUExecutionProvider", "CUDAExecutionProvider", "auto"], GPU_BUILD)
    assert chain == ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"]


def test_attempts_drop_the_failed_head_each_time() -> None:
    attempts = plan_attempts(settings(), GPU_BUILD, INPUTS)
    assert [[name for name, _ in a] for a in attempts] == [GPU_BUILD, GPU_BUILD[1:], GPU_BUILD[2:]]
    # the options travel with each provider into every attempt (onnxruntime's own fallback drops them)
    assert attempts[1][0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert plan_attempts(settings(device_id=1), ["CPUExecutionProvider"], INPUTS) == [
        [("CPUExecutionProvider", {})]
    ]


def test_trt_optimal_batch_is_clamped_to_max_batch_size() -> None:
    assert trt_batch_profile(settings(max_batch_size=8, trt_opt_batch_size=32)) == (1, 8, 8)
    assert trt_batch_profile(settings(max_batch_size=64, trt_opt_batch_size=0)) == (1, 1, 64)
    trt = select_providers(settings(max_batch_size=8), GPU_BUILD, INPUTS)[0][1]
    assert trt["trt_profile_opt_shapes"] == "input:8x1x28x28"
    assert trt["trt_profile_max_shapes"] == "input:8x1x28x28"


def test_trt_engine_cache_is_keyed_by_model_runtime_precision_and_profile() -> None:
    s = settings(trt_engine_cache_dir=Path("/c"), trt_fp16=True, max_batch_size=64)
    cache = trt_cache_dir(Path("/c"), "ab" * 32, "1.32.0", s)
    assert cache == Path("/c/abababababababab-ort1.32.0-fp16-b1-32-64")
    assert trt_cache_dir(Path("/c"), "ab" * 32, "1.32.0", settings(max_batch_size=64)) != cache
    trt = select_providers(s, GPU_BUILD, INPUTS, cache)[0][1]
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(cache)
    assert trt["trt_timing_cache_enable"] is True and trt["trt_timing_cache_path"] == str(cache)
    assert "trt_engine_cache_enable" not in select_providers(s, GPU_BUILD, INPUTS)[0][1]


def test_thread_spinning_off_by_default_and_switchable(monkeypatch: pytest.MonkeyPatch) -> None:
    so = session_options(OnnxSettings())
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("TRISERVE_ONNX_ALLOW_SPINNING", "true")
    so = session_options(OnnxSettings())
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
