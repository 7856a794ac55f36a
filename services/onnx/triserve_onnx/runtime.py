"""ONNX Runtime implementation of the :class:`~triserve_common.runtime.Runtime` contract."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from triserve_common.errors import TriserveError
from triserve_common.fallback import Fallback, first_working
from triserve_common.manifest import LoadedVersion
from triserve_common.runtime import Runtime, map_tensor_names
from triserve_onnx.engines import (
    TENSORRT,
    ProviderList,
    attempt_name,
    plan_attempts,
    provider_chain,
    select_providers,
    trt_cache_dir,
)
from triserve_onnx.settings import OnnxSettings

__all__ = ["OnnxRuntime", "SessionFactory", "default_session_factory", "select_providers", "session_options"]

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

SessionFactory = Callable[[Path, ProviderList], ort.InferenceSession]
"""Builds a session for one attempt (model file, providers with options); raises when it cannot."""


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


def default_session_factory(settings: OnnxSettings) -> SessionFactory:
    """Real ``InferenceSession`` per attempt.

    onnxruntime's own creation-time fallback is off (``enable_fallback=0``): it would retry with
    CUDA+CPU *without* the provider options; our attempts keep them and log why each one failed.
    Its run-time fallback (an execution provider failing inside ``run``) is switched back on, so a
    late TensorRT/CUDA failure still answers; the engine then reported is the one that runs.
    """

    def create(model: Path, attempt: ProviderList) -> ort.InferenceSession:
        session = ort.InferenceSession(
            str(model),
            sess_options=session_options(settings),
            providers=[name for name, _ in attempt],
            provider_options=[options for _, options in attempt],
            enable_fallback=0,
        )
        session.enable_fallback()
        return session

    return create


class OnnxRuntime(Runtime):
    """A verified ``model.onnx`` in an ``onnxruntime.InferenceSession`` (``run`` is thread-safe)."""

    platform = "onnxruntime_onnx"
    artifact_kind = "onnx"

    def __init__(self, settings: OnnxSettings, session_factory: SessionFactory | None = None) -> None:
        super().__init__(
            settings.model_store, settings.model_name, settings.model_version, settings.max_batch_size
        )
        self.settings = settings
        self._create = session_factory or default_session_factory(settings)
        self._session: ort.InferenceSession | None = None
        self._requested: list[str] = []
        self._fallbacks: list[Fallback] = []
        self._feed_names: dict[str, str] = {}
        self._fetch_names: list[str] = []
        self._output_names: list[str] = []

    def _load(self, loaded: LoadedVersion) -> None:
        onnx_files = [p for p in loaded.files if p.suffix == ".onnx"]
        if len(onnx_files) != 1:
            raise TriserveError(f"onnx artifact must have exactly one .onnx file, has {len(onnx_files)}")
        model = onnx_files[0]
        available = ort.get_available_providers()
        tensorrt = TENSORRT in provider_chain(self.settings.providers, available)
        cache = self._engine_cache(loaded) if tensorrt else None
        attempts = plan_attempts(self.settings, available, loaded.manifest.inputs, cache)
        chosen = first_working(
            attempts, lambda attempt: self._create(model, attempt), attempt_name, "execution provider"
        )
        session = chosen.result
        fallbacks = list(chosen.fallbacks)
        runs = list(session.get_providers())
        wanted = attempt_name(chosen.candidate)
        if not runs or runs[0] != wanted:
            # onnxruntime skips a provider whose libraries do not load (logging it) instead of raising.
            reason = f"onnxruntime did not enable it (its libraries did not load?); runs {runs}"
            log.warning("execution provider %s: %s", wanted, reason)
            fallbacks.append(Fallback(wanted, reason))
        self._feed_names = map_tensor_names(
            "input", [s.name for s in loaded.manifest.inputs], [i.name for i in session.get_inputs()]
        )
        fetch = map_tensor_names(
            "output", [s.name for s in loaded.manifest.outputs], [o.name for o in session.get_outputs()]
        )
        self._output_names = list(fetch)
        self._fetch_names = list(fetch.values())
        self._requested = [name for name, _ in attempts[0]]
        self._fallbacks = fallbacks
        self._session = session
        log.info(
            "onnxruntime %s: loaded %s; engine %s (providers %s, requested %s)",
            ort.__version__,
            model,
            self.engine,
            runs,
            self._requested,
        )

    def _engine_cache(self, loaded: LoadedVersion) -> Path | None:
        """This model's TensorRT engine cache folder (created), or None (not configured / not writable)."""
        root = self.settings.trt_engine_cache_dir
        if root is None:
            return None
        entries = loaded.manifest.artifacts[self.artifact_kind].files
        digest = next(f.sha256 for f in entries if f.path.endswith(".onnx"))
        cache = trt_cache_dir(root, digest, ort.__version__, self.settings)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("TensorRT engine cache %s not usable (%s): no engine reuse", cache, exc)
            return None
        return cache

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
        """Providers the session runs with now, in priority order (changes after a run-time fallback)."""
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
            "requested_providers": self._requested,
            "fallbacks": [f.describe() for f in self._fallbacks],
            "onnxruntime_version": ort.__version__,
        }

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {self._feed_names[name]: arr for name, arr in inputs.items()}
        results = self.session.run(self._fetch_names, feed)
        return {name: np.asarray(out) for name, out in zip(self._output_names, results, strict=True)}
