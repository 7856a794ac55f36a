"""Paddle Inference implementation of the :class:`~triserve_common.runtime.Runtime` contract.

The :class:`paddle.inference.Config` is built from a *plan*, a list of :class:`ConfigCall` computed
from the settings by :func:`plan_config` (pure, unit-tested for the GPU/TensorRT path even on a
CPU-only wheel) and applied by :func:`build_config`. Predictors are not thread-safe: the runtime
keeps a pool of ``predictor.clone()`` and checks one out per batch.
"""

from __future__ import annotations

import logging
import queue
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from triserve_common.errors import TriserveError
from triserve_common.manifest import LoadedVersion, TensorSpec
from triserve_common.runtime import Runtime, map_tensor_names
from triserve_paddle.settings import PaddleSettings

with warnings.catch_warnings():  # paddle warns about a missing ccache (only matters for C++ extensions)
    warnings.filterwarnings("ignore", message="No ccache found")
    import paddle
    from paddle import inference as paddle_infer

log = logging.getLogger(__name__)

PADDLE_VERSION: str = getattr(paddle, "__version__", "unknown")

Device = Literal["gpu", "cpu"]

_ONEDNN = "enable_onednn" if hasattr(paddle_infer.Config, "enable_onednn") else "enable_mkldnn"
_NO_ONEDNN = "disable_onednn" if hasattr(paddle_infer.Config, "disable_onednn") else "disable_mkldnn"
_ONEDNN_CACHE = (
    "set_onednn_cache_capacity"
    if hasattr(paddle_infer.Config, "set_onednn_cache_capacity")
    else "set_mkldnn_cache_capacity"
)
_TRT_PRECISION = {"fp32": paddle_infer.PrecisionType.Float32, "fp16": paddle_infer.PrecisionType.Half}


@dataclass(frozen=True)
class ConfigCall:
    """One ``paddle.inference.Config`` method call of a plan."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What this Paddle build and machine offer."""

    cuda: bool
    tensorrt: bool

    @classmethod
    def detect(cls) -> Capabilities:
        """CUDA: compiled in and a GPU visible; TensorRT: compiled in and its libraries loadable."""
        cuda = bool(paddle.device.is_compiled_with_cuda()) and paddle.device.cuda.device_count() > 0
        trt = cuda and all(
            _version_or_zero(probe) != (0, 0, 0)
            for probe in (paddle_infer.get_trt_compile_version, paddle_infer.get_trt_runtime_version)
        )
        return cls(cuda=cuda, tensorrt=trt)


def _version_or_zero(probe: Any) -> tuple[int, ...]:
    try:
        return tuple(probe())
    except Exception:  # a GPU build without TensorRT libraries may raise instead of answering
        return (0, 0, 0)


def choose_engine(settings: PaddleSettings, caps: Capabilities) -> tuple[Device, bool]:
    """(device, use TensorRT) from the settings; raises when a forced choice is unavailable."""
    if settings.device == "gpu" and not caps.cuda:
        raise TriserveError("device=gpu but this Paddle build has no CUDA or no GPU is visible")
    device: Device = "gpu" if settings.device == "gpu" or (settings.device == "auto" and caps.cuda) else "cpu"
    if device == "cpu":
        return device, False
    if settings.tensorrt == "on" and not caps.tensorrt:
        raise TriserveError("tensorrt=on but this Paddle build has no TensorRT")
    return device, settings.tensorrt == "on" or (settings.tensorrt == "auto" and caps.tensorrt)


def _batch_shapes(inputs: list[TensorSpec], batch: int) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for spec in inputs:
        dims = [batch if i == 0 and d == -1 else d for i, d in enumerate(spec.shape)]
        if any(d < 0 for d in dims):
            raise TriserveError(
                f"input '{spec.name}' {spec.shape}: TensorRT needs every non-batch dimension fixed"
            )
        shapes[spec.name] = dims
    return shapes


def plan_config(
    settings: PaddleSettings, device: Device, tensorrt: bool, inputs: list[TensorSpec]
) -> list[ConfigCall]:
    """The Config calls for ``device`` (GPU: memory pool, TensorRT with a dynamic batch range;
    CPU: oneDNN and math threads)."""
    calls: list[ConfigCall] = [ConfigCall("switch_ir_optim", (settings.ir_optim,))]
    if not settings.glog_info:
        calls.append(ConfigCall("disable_glog_info"))
    if device == "gpu":
        calls.append(ConfigCall("enable_use_gpu", (settings.gpu_memory_mb, settings.gpu_device_id)))
        if tensorrt:
            low, opt, high = settings.trt_batch_range()
            calls.append(
                ConfigCall(
                    "set_trt_dynamic_shape_info",
                    kwargs={
                        "min_input_shape": _batch_shapes(inputs, low),
                        "max_input_shape": _batch_shapes(inputs, high),
                        "optim_input_shape": _batch_shapes(inputs, opt),
                    },
                )
            )
            calls.append(
                ConfigCall(
                    "enable_tensorrt_engine",
                    kwargs={
                        "workspace_size": settings.trt_workspace_bytes,
                        "max_batch_size": high,
                        "min_subgraph_size": settings.trt_min_subgraph_size,
                        "precision_mode": _TRT_PRECISION[settings.trt_precision],
                        "use_static": settings.trt_cache_dir is not None,
                        "use_calib_mode": False,
                    },
                )
            )
            if settings.trt_cache_dir is not None:
                calls.append(ConfigCall("set_optim_cache_dir", (str(settings.trt_cache_dir),)))
    else:
        calls.append(ConfigCall("disable_gpu"))
        if settings.onednn:
            calls.append(ConfigCall(_ONEDNN))
            calls.append(ConfigCall(_ONEDNN_CACHE, (settings.onednn_cache_capacity,)))
        else:  # Paddle 3 turns oneDNN on by default for CPU
            calls.append(ConfigCall(_NO_ONEDNN))
        calls.append(ConfigCall("set_cpu_math_library_num_threads", (settings.cpu_threads,)))
    return calls


def build_config(model_file: Path, params_file: Path, plan: list[ConfigCall]) -> paddle_infer.Config:
    """A Config for the model with every call of ``plan`` applied."""
    config = paddle_infer.Config(str(model_file), str(params_file))
    for call in plan:
        getattr(config, call.method)(*call.args, **call.kwargs)
    return config


def engine_name(config: paddle_infer.Config) -> str:
    """The engine a Config selects, read back from the Config itself."""
    if config.use_gpu():
        if config.tensorrt_engine_enabled():
            half = config.tensorrt_precision_mode() == paddle_infer.PrecisionType.Half
            return f"paddle-tensorrt-{'fp16' if half else 'fp32'}"
        return "paddle-gpu"
    if config.onednn_enabled() if hasattr(config, "onednn_enabled") else config.mkldnn_enabled():
        return "paddle-onednn"
    return "paddle-cpu"


class PaddleRuntime(Runtime):
    """``inference.json`` + ``inference.pdiparams`` behind a pool of cloned predictors."""

    platform = "paddle_inference"
    artifact_kind = "paddle"

    def __init__(self, settings: PaddleSettings, capabilities: Capabilities | None = None) -> None:
        super().__init__(
            settings.model_store, settings.model_name, settings.model_version, settings.max_batch_size
        )
        self.settings = settings
        self.capabilities = capabilities
        self._pool: queue.Queue[Any] = queue.Queue()
        self._engine = "not-loaded"
        self._device: Device = "cpu"
        self._feed: dict[str, str] = {}
        self._fetch: dict[str, str] = {}

    def _load(self, loaded: LoadedVersion) -> None:
        model_file = _one(loaded.files, (".json", ".pdmodel"), "model")
        params_file = _one(loaded.files, (".pdiparams",), "params")
        caps = self.capabilities or Capabilities.detect()
        device, tensorrt = choose_engine(self.settings, caps)
        plan = plan_config(self.settings, device, tensorrt, loaded.manifest.inputs)
        config = build_config(model_file, params_file, plan)
        try:
            first = paddle_infer.create_predictor(config)
        except Exception as exc:  # paddle raises assorted C++ errors
            raise TriserveError(f"paddle could not load {model_file}: {exc}") from exc
        self._feed = map_tensor_names(
            "input", [s.name for s in loaded.manifest.inputs], first.get_input_names()
        )
        self._fetch = map_tensor_names(
            "output", [s.name for s in loaded.manifest.outputs], first.get_output_names()
        )
        predictors = [first] + [first.clone() for _ in range(self.settings.predictor_pool_size - 1)]
        if self.settings.warmup:
            for predictor in predictors:
                self._warmup(predictor, loaded.manifest.inputs)
        for predictor in predictors:
            self._pool.put(predictor)
        self._device = device
        self._engine = engine_name(config)
        log.info(
            "paddle %s: loaded %s on %s, engine %s, %d predictors",
            PADDLE_VERSION,
            model_file,
            device,
            self._engine,
            len(predictors),
        )

    def _warmup(self, predictor: Any, inputs: list[TensorSpec]) -> None:
        shapes = [[1 if d == -1 else d for d in spec.shape] for spec in inputs]
        if any(d < 0 for shape in shapes for d in shape):
            return
        dtypes = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}
        batch = {
            spec.name: np.zeros(shape, dtype=dtypes.get(spec.datatype, np.float32))
            for spec, shape in zip(inputs, shapes, strict=True)
        }
        self._run(predictor, batch)

    def unload(self) -> None:
        super().unload()
        while not self._pool.empty():
            self._pool.get_nowait()

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def concurrency(self) -> int:
        return self.settings.predictor_pool_size

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "device": self._device,
            "predictors": self.settings.predictor_pool_size,
            "paddle_version": PADDLE_VERSION,
        }

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        predictor = self._pool.get()
        try:
            return self._run(predictor, inputs)
        finally:
            self._pool.put(predictor)

    def _run(self, predictor: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, arr in inputs.items():
            handle = predictor.get_input_handle(self._feed[name])
            handle.reshape(list(arr.shape))
            handle.copy_from_cpu(np.ascontiguousarray(arr))
        predictor.run()
        return {name: predictor.get_output_handle(fetch).copy_to_cpu() for name, fetch in self._fetch.items()}


def _one(files: list[Path], suffixes: tuple[str, ...], what: str) -> Path:
    found = [p for p in files if p.suffix in suffixes]
    if len(found) != 1:
        raise TriserveError(f"paddle artifact needs exactly one {what} file {suffixes}, has {len(found)}")
    return found[0]
