"""Paddle Inference implementation of the :class:`~triserve_common.runtime.Runtime` contract.

The engine is chosen by :func:`triserve_paddle.engines.plan_tiers` (Paddle-TensorRT → Paddle GPU →
oneDNN, see there) and the first tier that initialises wins: a tier whose conversion, predictor
creation or warm-up raises is logged and the next one tried. The :class:`paddle.inference.Config`
of a tier is built from a *plan*, a list of :class:`ConfigCall` computed by :func:`plan_config`
(pure, unit-tested) and applied by :func:`build_config`. Predictors are not thread-safe: the
runtime keeps a pool of ``predictor.clone()`` and checks one out per batch.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triserve_common.errors import TriserveError
from triserve_common.fallback import Fallback, first_working
from triserve_common.manifest import LoadedVersion, TensorSpec
from triserve_common.runtime import Runtime, map_tensor_names
from triserve_paddle import trt
from triserve_paddle.engines import Capabilities, Device, Tier, engine_label, plan_tiers
from triserve_paddle.settings import PaddleSettings

with warnings.catch_warnings():  # paddle warns about a missing ccache (only matters for C++ extensions)
    warnings.filterwarnings("ignore", message="No ccache found")
    import paddle
    from paddle import inference as paddle_infer

log = logging.getLogger(__name__)

PADDLE_VERSION: str = getattr(paddle, "__version__", "unknown")

_ONEDNN = "enable_onednn" if hasattr(paddle_infer.Config, "enable_onednn") else "enable_mkldnn"
_NO_ONEDNN = "disable_onednn" if hasattr(paddle_infer.Config, "disable_onednn") else "disable_mkldnn"
_ONEDNN_CACHE = (
    "set_onednn_cache_capacity"
    if hasattr(paddle_infer.Config, "set_onednn_cache_capacity")
    else "set_mkldnn_cache_capacity"
)

PredictorFactory = Callable[[Tier, Any], Any]
"""(tier, ``paddle.inference.Config``) → predictor; raises when the engine cannot start."""


def default_predictor_factory(_tier: Tier, config: Any) -> Any:
    """``paddle.inference.create_predictor``."""
    return paddle_infer.create_predictor(config)


@dataclass(frozen=True)
class ConfigCall:
    """One ``paddle.inference.Config`` method call of a plan."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def plan_config(settings: PaddleSettings, device: Device) -> list[ConfigCall]:
    """The Config calls for ``device`` (GPU: memory pool and device; CPU: oneDNN and math threads).

    Paddle-TensorRT needs no call here: its engines are ops of the converted program (see
    :mod:`triserve_paddle.trt`), which runs on a plain GPU Config.
    """
    calls: list[ConfigCall] = [ConfigCall("switch_ir_optim", (settings.ir_optim,))]
    if not settings.glog_info:
        calls.append(ConfigCall("disable_glog_info"))
    if device == "gpu":
        calls.append(ConfigCall("enable_use_gpu", (settings.gpu_memory_mb, settings.gpu_device_id)))
        return calls
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
    """The engine a Config selects, read back from the Config itself (GPU, oneDNN or plain CPU)."""
    if config.use_gpu():
        return "paddle-gpu"
    if config.onednn_enabled() if hasattr(config, "onednn_enabled") else config.mkldnn_enabled():
        return "paddle-onednn"
    return "paddle-cpu"


@dataclass
class _Built:
    """What one tier built: predictors, the engine they run, and (TensorRT) the converted program."""

    predictors: list[Any]
    engine: str
    tensorrt_ops: int = 0
    trt_folder: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class PaddleRuntime(Runtime):
    """``inference.json`` + ``inference.pdiparams`` behind a pool of cloned predictors."""

    platform = "paddle_inference"
    artifact_kind = "paddle"

    def __init__(
        self,
        settings: PaddleSettings,
        capabilities: Capabilities | None = None,
        create_predictor: PredictorFactory | None = None,
        convert: trt.Converter | None = None,
    ) -> None:
        super().__init__(
            settings.model_store, settings.model_name, settings.model_version, settings.max_batch_size
        )
        self.settings = settings
        self.capabilities = capabilities
        self._create = create_predictor or default_predictor_factory
        self._convert = convert or trt.paddle_convert
        self._pool: queue.Queue[Any] = queue.Queue()
        self._engine = "not-loaded"
        self._device: Device = "cpu"
        self._fallbacks: list[Fallback] = []
        self._tensorrt_ops = 0
        self._scratch: Path | None = None
        self._feed: dict[str, str] = {}
        self._fetch: dict[str, str] = {}

    def _load(self, loaded: LoadedVersion) -> None:
        model_file = _one(loaded.files, (".json", ".pdmodel"), "model")
        params_file = _one(loaded.files, (".pdiparams",), "params")
        caps = self.capabilities or Capabilities.detect(self.settings.gpu_device_id)
        tiers = plan_tiers(self.settings, caps)
        chosen = first_working(
            tiers,
            lambda tier: self._build(tier, loaded, model_file, params_file, caps),
            lambda tier: engine_label(tier, self.settings),
            "paddle engine",
        )
        built = chosen.result
        for predictor in built.predictors:
            self._pool.put(predictor)
        self._device = chosen.candidate.device
        self._engine = built.engine
        self._tensorrt_ops = built.tensorrt_ops
        self._fallbacks = chosen.fallbacks
        log.info(
            "paddle %s: loaded %s; engine %s, %d predictors (tiers tried: %s)",
            PADDLE_VERSION,
            model_file,
            self._engine,
            len(built.predictors),
            [engine_label(t, self.settings) for t in tiers],
        )

    def _build(
        self, tier: Tier, loaded: LoadedVersion, model_file: Path, params_file: Path, caps: Capabilities
    ) -> _Built:
        """Predictors for one tier, warmed up; raises when the tier cannot run."""
        files = (model_file, params_file)
        folder: Path | None = None
        cached = False
        ops = 0
        if tier.tensorrt:
            folder, files, cached = self._tensorrt_program(loaded, model_file, caps)
            ops = trt.tensorrt_op_count(files[0])
            if ops == 0:
                raise TriserveError("paddle.tensorrt.convert put no subgraph on TensorRT")
        config = build_config(files[0], files[1], plan_config(self.settings, tier.device))
        try:
            predictors = self._predictors(tier, config, loaded.manifest.inputs, loaded.manifest.outputs)
        except Exception:
            if folder is not None and cached:
                trt.invalidate(folder)
            raise
        engine = engine_label(tier, self.settings) if tier.device == "gpu" else engine_name(config)
        return _Built(predictors, engine, ops, folder)

    def _tensorrt_program(
        self, loaded: LoadedVersion, model_file: Path, caps: Capabilities
    ) -> tuple[Path, tuple[Path, Path], bool]:
        """The TensorRT-converted program (cached in ``trt_cache_dir``, else in a scratch folder)."""
        if model_file.suffix != ".json":
            raise TriserveError(f"Paddle-TensorRT converts PIR models (.json); {model_file.name} is not one")
        plan = trt.trt_plan(self.settings, loaded.manifest.inputs)
        digests = [f.sha256 for f in loaded.manifest.artifacts[self.artifact_kind].files]
        versions = {"paddle": PADDLE_VERSION, "tensorrt": trt.tensorrt_version(), "gpu": caps.gpu_name}
        root = self.settings.trt_cache_dir
        if root is None:
            self._scratch = self._scratch or Path(tempfile.mkdtemp(prefix="triserve-paddle-trt-"))
            root = self._scratch
        folder = root / trt.cache_key(plan, digests, versions)
        model_json, params, cached = trt.prepare(model_file, plan, folder, self._convert)
        return folder, (model_json, params), cached

    def _predictors(
        self, tier: Tier, config: Any, inputs: list[TensorSpec], outputs: list[TensorSpec]
    ) -> list[Any]:
        """The first predictor, its clones, warmed up (always the first on GPU: engines fail late)."""
        first = self._create(tier, config)
        if tier.device == "gpu" and not config.use_gpu():  # Paddle logs and carries on on the CPU
            raise TriserveError("Paddle did not enable the GPU (a CPU-only paddle build?)")
        self._feed = map_tensor_names("input", [s.name for s in inputs], first.get_input_names())
        self._fetch = map_tensor_names("output", [s.name for s in outputs], first.get_output_names())
        predictors = [first] + [first.clone() for _ in range(self.settings.predictor_pool_size - 1)]
        warm = predictors if self.settings.warmup else predictors[:1] if tier.device == "gpu" else []
        for predictor in warm:
            self._warmup(predictor, inputs)
        return predictors

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
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def concurrency(self) -> int:
        return self.settings.predictor_pool_size

    def metadata(self) -> dict[str, Any]:
        meta = {
            **super().metadata(),
            "device": self._device,
            "predictors": self.settings.predictor_pool_size,
            "paddle_version": PADDLE_VERSION,
            "fallbacks": [f.describe() for f in self._fallbacks],
        }
        if self._tensorrt_ops:
            meta["tensorrt_engine_ops"] = self._tensorrt_ops
        return meta

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
