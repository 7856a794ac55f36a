"""A tiny in-process Runtime for unit tests of the data plane and REST surface (no model files)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from triserve_common.manifest import TensorSpec
from triserve_common.runtime import Runtime


class FakeRuntime(Runtime):
    """``logits[i, k] = sum(input[i]) * (k + 1)``; input FP32 [-1,1,28,28], output FP32 [-1,10]."""

    platform = "fake"
    artifact_kind = "fake"

    def __init__(
        self,
        max_batch_size: int = 8,
        delay_s: float = 0.0,
        fail: bool = False,
        name: str = "mnist",
        version: str = "1",
        instances: int = 1,
    ) -> None:
        super().__init__(Path("/nonexistent"), name, version, max_batch_size)
        self.delay_s = delay_s
        self.fail = fail
        self.instances = instances
        self.calls = 0
        self.unloaded = False
        self._version = version
        self._lock = threading.Lock()

    def load(self) -> None:
        self._ready = True

    def _load(self, loaded: object) -> None:  # pragma: no cover - load() is overridden
        raise NotImplementedError

    @property
    def version(self) -> str:
        return self._version

    @property
    def concurrency(self) -> int:
        return self.instances

    def unload(self) -> None:
        super().unload()
        self.unloaded = True

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 28, 28])]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])]

    @property
    def engine(self) -> str:
        return "fake-engine"

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("engine exploded")
        return {"logits": expected_logits(inputs["input"])}


def expected_logits(x: np.ndarray) -> np.ndarray:
    """What :class:`FakeRuntime` answers for ``x``."""
    sums = x.reshape(x.shape[0], -1).sum(axis=1, dtype=np.float32)
    logits: np.ndarray = (sums[:, None] * np.arange(1, 11, dtype=np.float32)).astype(np.float32)
    return logits
