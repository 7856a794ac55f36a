"""Settings of the Paddle Inference service (env prefix ``TRISERVE_PADDLE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import SettingsConfigDict

from triserve_common.settings import RuntimeSettings


class PaddleSettings(RuntimeSettings):
    """``TRISERVE_PADDLE_*``: device, TensorRT / oneDNN options and the predictor pool."""

    model_config = SettingsConfigDict(env_prefix="TRISERVE_PADDLE_", extra="ignore", protected_namespaces=())

    port: int = 8002
    device: Literal["auto", "gpu", "cpu"] = "auto"
    """auto = the GPU when this Paddle build has CUDA and sees one, falling back to the CPU when the
    GPU engine fails to initialise; gpu = GPU required (no CPU fallback); cpu = CPU only."""
    predictor_pool_size: int = 2
    """Predictor clones (one per concurrent batch; predictors are not thread-safe)."""
    max_batch_size: int = 256
    """Largest batch accepted (400 above); also TensorRT's max batch shape."""
    warmup: bool = True
    """Run one batch on every predictor at load (builds oneDNN primitives / TensorRT engines early)."""
    ir_optim: bool = True
    """Paddle's IR optimisation passes."""
    glog_info: bool = False
    """Paddle's verbose glog output."""

    # GPU
    gpu_device_id: int = 0
    """GPU for Paddle on the GPU (the TensorRT conversion builds on the first visible GPU: choose it
    with ``CUDA_VISIBLE_DEVICES``)."""
    gpu_memory_mb: int = 256
    """Initial GPU memory pool (MB) for ``enable_use_gpu``."""
    tensorrt: Literal["auto", "on", "off"] = "auto"
    """Paddle-TensorRT on the GPU (``paddle.tensorrt.convert`` of the PIR model at start): auto = when
    available, falling back to plain Paddle GPU when it fails; on = required; off = never."""
    trt_precision: Literal["fp32", "fp16"] = "fp32"
    """TensorRT precision (fp16: half-precision kernels where TensorRT finds them faster)."""
    trt_workspace_bytes: int = 1 << 30
    """TensorRT builder workspace."""
    trt_min_subgraph_size: int = 3
    """Smallest op group handed to TensorRT."""
    trt_min_batch: int = 1
    """Dynamic batch range of the TensorRT engines: min ..."""
    trt_opt_batch: int = 32
    """... the batch the engines are tuned for (clamped into [min, max]) ..."""
    trt_max_batch: int | None = None
    """... and max (None = ``max_batch_size``)."""
    trt_cache_dir: Path | None = None
    """Keep the TensorRT-converted program and its engines here, one folder per model, Paddle and
    TensorRT version, GPU, precision and batch range; a restart of the process reuses it (None =
    convert at every start). Put it on a volume that outlives the process (GPU images:
    /var/cache/triserve)."""

    # CPU
    onednn: bool = True
    """oneDNN (MKL-DNN) kernels on CPU."""
    onednn_cache_capacity: int = 16
    """oneDNN primitive cache entries per predictor (one per distinct input shape); 0 = unbounded."""
    cpu_threads: int = 1
    """Math library threads per predictor."""

    @model_validator(mode="after")
    def _check_batches(self) -> PaddleSettings:
        max_batch = self.trt_batch_range()[2]
        if not 1 <= self.trt_min_batch <= max_batch:
            raise ValueError(f"need 1 <= trt_min_batch ({self.trt_min_batch}) <= trt_max_batch ({max_batch})")
        if self.predictor_pool_size < 1:
            raise ValueError("predictor_pool_size must be at least 1")
        return self

    def trt_batch_range(self) -> tuple[int, int, int]:
        """TensorRT (min, opt, max) batch; opt clamped into [min, max]."""
        max_batch = self.trt_max_batch or self.max_batch_size
        return self.trt_min_batch, min(max(self.trt_opt_batch, self.trt_min_batch), max_batch), max_batch
