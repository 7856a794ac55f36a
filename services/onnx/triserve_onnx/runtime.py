"""ONNX Runtime implementation of the :class:`~triserve_common.runtime.Runtime` contract."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort

from triserve_common.errors import TriserveError
from triserve_common.manifest import LoadedVersion, TensorSpec
from triserve_common.runtime import Runtime, map_tensor_names
from triserve_onnx.settings import OnnxSettings

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

ProviderList = list[tuple[str, dict[str, Any]]]


def _profile_shapes(specs: list[TensorSpec], batch: int) -> str | None:
    """TensorRT profile ``name:BxCxHxW,...`` with the batch dim set; None if other dims are dynamic."""
    parts = []
    for spec in specs:
        dims = [batch if i == 0 and d == -1 else d for i, d in enumerate(spec.shape)]
        if any(d < 0 for d in dims):
            return None
        parts.append(f"{spec.name}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


def select_providers(settings: OnnxSettings, available: list[str], inputs: list[TensorSpec]) -> ProviderList:
    """Preferred providers that this onnxruntime build has, with their options; CPU always last."""
    chosen: ProviderList = []
    for name in settings.providers:
        if name not in available or any(name == c for c, _ in chosen):
            continue
        options: dict[str, Any] = {}
        if name == TENSORRT:
            options = {"device_id": settings.device_id, "trt_fp16_enable": settings.trt_fp16}
            if settings.trt_engine_cache_dir is not None:
                options["trt_engine_cache_enable"] = True
                options["trt_engine_cache_path"] = str(settings.trt_engine_cache_dir)
            shapes = {
                "trt_profile_min_shapes": _profile_shapes(inputs, 1),
                "trt_profile_opt_shapes": _profile_shapes(inputs, settings.trt_opt_batch_size),
                "trt_profile_max_shapes": _profile_shapes(inputs, settings.max_batch_size),
            }
            if all(shapes.values()):
                options.update(shapes)
        elif name == CUDA:
            options = {"device_id": settings.device_id}
        chosen.append((name, options))
    if not any(name == CPU for name, _ in chosen):
        chosen.append((CPU, {}))
    return chosen


def session_options(settings: OnnxSettings) -> ort.SessionOptions:
    """Threads, graph optimisation level and logging from the settings."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.intra_op_threads
    so.inter_op_num_threads = settings.inter_op_threads
    if settings.inter_op_threads > 1:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization_level]
    spinning = "1" if settings.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    so.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    so.log_severity_level = 3
    return so


class OnnxRuntime(Runtime):
    """A verified ``model.onnx`` in an ``onnxruntime.InferenceSession`` (``run`` is thread-safe)."""

    platform = "onnxruntime_onnx"
    artifact_kind = "onnx"

    def __init__(self, settings: OnnxSettings) -> None:
        super().__init__(
            settings.model_store, settings.model_name, settings.model_version, settings.max_batch_size
        )
        self.settings = settings
        self._session: ort.InferenceSession | None = None
        self._feed_names: dict[str, str] = {}
        self._fetch_names: list[str] = []
        self._output_names: list[str] = []

    def _load(self, loaded: LoadedVersion) -> None:
        onnx_files = [p for p in loaded.files if p.suffix == ".onnx"]
        if len(onnx_files) != 1:
            raise TriserveError(f"onnx artifact must have exactly one .onnx file, has {len(onnx_files)}")
        providers = select_providers(self.settings, ort.get_available_providers(), loaded.manifest.inputs)
        session = ort.InferenceSession(
            str(onnx_files[0]),
            sess_options=session_options(self.settings),
            providers=[name for name, _ in providers],
            provider_options=[options for _, options in providers],
        )
        self._feed_names = map_tensor_names(
            "input", [s.name for s in loaded.manifest.inputs], [i.name for i in session.get_inputs()]
        )
        fetch = map_tensor_names(
            "output", [s.name for s in loaded.manifest.outputs], [o.name for o in session.get_outputs()]
        )
        self._output_names = list(fetch)
        self._fetch_names = list(fetch.values())
        self._session = session
        log.info(
            "onnxruntime %s: loaded %s with providers %s (requested %s)",
            ort.__version__,
            onnx_files[0],
            session.get_providers(),
            [name for name, _ in providers],
        )

    def unload(self) -> None:
        super().unload()
        self._session = None

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise TriserveError("onnx session is not loaded", 503)
        return self._session

    @property
    def providers(self) -> list[str]:
        """Providers of the session, in priority order."""
        return list(self._session.get_providers()) if self._session is not None else []

    @property
    def engine(self) -> str:
        providers = self.providers
        return providers[0] if providers else "not-loaded"

    @property
    def concurrency(self) -> int:
        return max(1, self.settings.workers)

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "providers": self.providers,
            "onnxruntime_version": ort.__version__,
        }

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {self._feed_names[name]: arr for name, arr in inputs.items()}
        results = self.session.run(self._fetch_names, feed)
        return {name: np.asarray(out) for name, out in zip(self._output_names, results, strict=True)}
