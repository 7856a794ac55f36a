"""Which Paddle Inference engines to try, best first (pure logic, tested without a GPU).

``device=auto, tensorrt=auto`` (the defaults) try Paddle-TensorRT, then Paddle on the GPU, then
the CPU with oneDNN, keeping those this Paddle build and machine offer; the runtime falls back to
the next tier when one fails to initialise. ``device=gpu`` / ``tensorrt=on`` *require* that engine:
the service refuses to start rather than run something slower than asked for.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Literal

from triserve_common.errors import TriserveError
from triserve_paddle.settings import PaddleSettings

log = logging.getLogger(__name__)

Device = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class Capabilities:
    """What this Paddle build and machine offer."""

    cuda: bool
    tensorrt: bool
    gpu_name: str = ""

    @classmethod
    def detect(cls, device_id: int = 0) -> Capabilities:
        """CUDA: compiled in and a GPU visible. TensorRT: compiled in, its libraries load, and the
        ``tensorrt`` Python package that ``paddle.tensorrt.convert`` imports is installed."""
        import paddle
        from paddle import inference as paddle_infer

        cuda = bool(paddle.device.is_compiled_with_cuda()) and _probe(paddle.device.cuda.device_count) > 0
        trt = (
            cuda
            and all(
                _version(probe) != (0, 0, 0)
                for probe in (paddle_infer.get_trt_compile_version, paddle_infer.get_trt_runtime_version)
            )
            and importlib.util.find_spec("tensorrt") is not None
        )
        name = ""
        if cuda:
            try:
                name = str(paddle.device.cuda.get_device_name(device_id))
            except Exception:  # the name only keys the engine cache
                name = "unknown-gpu"
            log.info(
                "paddle GPU %r; TensorRT compiled %s, runtime %s, python package %s",
                name,
                _version(paddle_infer.get_trt_compile_version),
                _version(paddle_infer.get_trt_runtime_version),
                "present" if importlib.util.find_spec("tensorrt") else "absent",
            )
        return cls(cuda=cuda, tensorrt=trt, gpu_name=name)


def _probe(fn: Any) -> int:
    try:
        return int(fn())
    except Exception:  # a GPU build without a driver raises instead of answering 0
        return 0


def _version(probe: Any) -> tuple[int, ...]:
    try:
        return tuple(probe())
    except Exception:  # a GPU build without TensorRT libraries may raise instead of answering
        return (0, 0, 0)


@dataclass(frozen=True)
class Tier:
    """One engine to try: a device, with or without TensorRT."""

    device: Device
    tensorrt: bool = False


TENSORRT = Tier("gpu", tensorrt=True)
GPU = Tier("gpu")
CPU = Tier("cpu")


def plan_tiers(settings: PaddleSettings, caps: Capabilities) -> list[Tier]:
    """Tiers to try, best first; raises :class:`TriserveError` when a required engine is missing."""
    if settings.device == "cpu":
        return [CPU]
    if settings.device == "gpu" and not caps.cuda:
        raise TriserveError("device=gpu but this Paddle build has no CUDA or no GPU is visible")
    if settings.tensorrt == "on" and not caps.tensorrt:
        raise TriserveError(
            "tensorrt=on but TensorRT is unavailable (Paddle build, libnvinfer, or the tensorrt package)"
        )
    if not caps.cuda:
        return [CPU]
    if settings.tensorrt == "on":
        return [TENSORRT]
    tiers = [TENSORRT] if settings.tensorrt == "auto" and caps.tensorrt else []
    tiers.append(GPU)
    if settings.device == "auto":
        tiers.append(CPU)
    return tiers


def engine_label(tier: Tier, settings: PaddleSettings) -> str:
    """The engine name reported for a tier that runs (``paddle-tensorrt-fp16``, ``paddle-onednn``...)."""
    if tier.tensorrt:
        return f"paddle-tensorrt-{settings.trt_precision}"
    if tier.device == "gpu":
        return "paddle-gpu"
    return "paddle-onednn" if settings.onednn else "paddle-cpu"
