"""Settings of the ONNX Runtime service (env prefix ``TRISERVE_ONNX_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from triserve_common.settings import RuntimeSettings

AUTO = "auto"
"""``providers=auto``: TensorRT, then CUDA, then CPU (those this onnxruntime build has)."""


class OnnxSettings(RuntimeSettings):
    """``TRISERVE_ONNX_*``: where the model is, which execution providers, how many threads."""

    model_config = SettingsConfigDict(env_prefix="TRISERVE_ONNX_", extra="ignore", protected_namespaces=())

    port: int = 8001
    providers: Annotated[list[str], NoDecode] = [AUTO]
    """Execution providers, best first (comma separated in the env); ``auto`` = TensorRT, CUDA, CPU.
    Those not in ``onnxruntime.get_available_providers()`` are skipped; when creating the session
    with one raises, the next is tried; CPU is always the last resort."""
    device_id: int = 0
    """GPU for the CUDA / TensorRT providers."""
    intra_op_threads: int = 0
    """Threads inside one operator (0 = onnxruntime's default: one per physical core)."""
    inter_op_threads: int = 0
    """Threads across operators in parallel execution mode (0 = default)."""
    allow_spinning: bool = False
    """Let idle onnxruntime threads busy-wait for work (lower latency on dedicated cores; on shared
    cores the spinning starves the other processes, so off by default)."""
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    """onnxruntime graph optimisations."""
    workers: int = 2
    """Concurrent ``session.run`` calls (the data plane's thread pool; session.run is thread-safe)."""
    max_batch_size: int = 256
    """Largest batch accepted (400 above); also the TensorRT profile's max batch."""
    trt_opt_batch_size: int = 32
    """TensorRT profile's optimal batch (clamped to ``max_batch_size``)."""
    trt_fp16: bool = False
    """Let TensorRT use FP16 kernels."""
    trt_engine_cache_dir: Path | None = None
    """Keep built TensorRT engines (and timing caches) here, in a subfolder per model, onnxruntime
    version, precision and profile; a restart of the process reuses them (None = rebuild at every
    start). Put it on a volume that outlives the process (the GPU images use /var/cache/triserve)."""

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value
