"""Which ONNX Runtime execution providers to try, in which order, with which options (pure logic).

``providers=auto`` (the default) means TensorRT → CUDA → CPU, keeping those this onnxruntime build
has. Each *attempt* is the chain from one provider on: when creating the session with TensorRT first
raises, the next attempt starts with CUDA, then with CPU alone (see :func:`plan_attempts`).

TensorRT options follow the TensorRT execution provider's documented provider options
(https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html#configurations):
an explicit min/opt/max batch profile (opt clamped into ``[1, max_batch_size]``), FP16, and the
engine + timing caches in a folder keyed by what invalidates them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from triserve_common.manifest import TensorSpec
from triserve_onnx.settings import AUTO, OnnxSettings

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEFAULT_CHAIN = [TENSORRT, CUDA, CPU]
"""What ``auto`` means: best first."""

ProviderList = list[tuple[str, dict[str, Any]]]


def provider_chain(requested: list[str], available: list[str]) -> list[str]:
    """Requested providers (``auto`` expanded) that this build has, without repeats; CPU always last."""
    chain: list[str] = []
    for name in requested:
        for provider in DEFAULT_CHAIN if name == AUTO else [name]:
            if provider in available and provider not in chain and provider != CPU:
                chain.append(provider)
    return [*chain, CPU]


def trt_batch_profile(settings: OnnxSettings) -> tuple[int, int, int]:
    """TensorRT (min, opt, max) batch: opt clamped into ``[1, max_batch_size]``."""
    high = settings.max_batch_size
    return 1, min(max(settings.trt_opt_batch_size, 1), high), high


def _profile_shapes(specs: list[TensorSpec], batch: int) -> str | None:
    """TensorRT profile ``name:BxCxHxW,...`` with the batch dim set; None if other dims are dynamic."""
    parts = []
    for spec in specs:
        dims = [batch if i == 0 and d == -1 else d for i, d in enumerate(spec.shape)]
        if any(d < 0 for d in dims):
            return None
        parts.append(f"{spec.name}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


def trt_cache_dir(root: Path, model_sha256: str, ort_version: str, settings: OnnxSettings) -> Path:
    """Engine cache folder for this model, onnxruntime version, precision and batch profile.

    onnxruntime reuses a cached engine only for the same model and profile; a new image (other
    onnxruntime/TensorRT) or precision gets its own folder instead of a stale engine.
    """
    low, opt, high = trt_batch_profile(settings)
    precision = "fp16" if settings.trt_fp16 else "fp32"
    return root / f"{model_sha256[:16]}-ort{ort_version}-{precision}-b{low}-{opt}-{high}"


def provider_options(
    name: str, settings: OnnxSettings, inputs: list[TensorSpec], cache_dir: Path | None
) -> dict[str, Any]:
    """Options of one provider (device, and for TensorRT: profile, FP16, caches)."""
    if name == CUDA:
        return {"device_id": settings.device_id}
    if name != TENSORRT:
        return {}
    options: dict[str, Any] = {"device_id": settings.device_id, "trt_fp16_enable": settings.trt_fp16}
    if cache_dir is not None:
        options.update(
            {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache_dir),
            }
        )
    low, opt, high = trt_batch_profile(settings)
    shapes = {
        "trt_profile_min_shapes": _profile_shapes(inputs, low),
        "trt_profile_opt_shapes": _profile_shapes(inputs, opt),
        "trt_profile_max_shapes": _profile_shapes(inputs, high),
    }
    if all(shapes.values()):
        options.update(shapes)
    return options


def select_providers(
    settings: OnnxSettings, available: list[str], inputs: list[TensorSpec], cache_dir: Path | None = None
) -> ProviderList:
    """The full preferred chain with each provider's options (the first attempt)."""
    return [
        (name, provider_options(name, settings, inputs, cache_dir))
        for name in provider_chain(settings.providers, available)
    ]


def plan_attempts(
    settings: OnnxSettings, available: list[str], inputs: list[TensorSpec], cache_dir: Path | None = None
) -> list[ProviderList]:
    """Session attempts, best first: the chain, then the chain without its head, ..., CPU alone."""
    chain = select_providers(settings, available, inputs, cache_dir)
    return [chain[i:] for i in range(len(chain))]


def attempt_name(attempt: ProviderList) -> str:
    """The provider an attempt is for (its head)."""
    return attempt[0][0]
