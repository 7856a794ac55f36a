"""Explanations, HTTP-free: which backend explains, the bounds, and the handler's answer checked.

Only TorchServe backends explain (the handler runs Captum's Integrated Gradients in TorchServe's
worker, see ``handlers/mnist_handler.py``): the gateway sends the preprocessed ``.npy`` batch to
TorchServe's ``POST /explanations/{model}[/{version}]`` with headers ``X-Explain-Steps`` and
``X-Explain-Target``, and gets one attribution map per image back.

Cost is bounded twice: at most :attr:`ExplainLimits.max_images` images per request and
:attr:`ExplainLimits.max_steps` Integrated Gradients steps (each step is one forward + backward pass
per image); the handler refuses more than 4 images or 256 steps whatever the gateway allows.
Client mistakes are 4xx; a model without a TorchServe backend answers 404 for explanations.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from triserve_common.errors import (
    BadRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
)
from triserve_gateway.errors import BackendError, UnknownBackendError
from triserve_gateway.gateway import Gateway
from triserve_gateway.models import ModelVersion

Array = np.ndarray[Any, Any]
METHOD = "integrated_gradients"
HANDLER_MAX_STEPS = 256
HANDLER_MAX_IMAGES = 4


@runtime_checkable
class ExplainingClient(Protocol):
    """A backend client that explains (:class:`~triserve_gateway.backends.TorchServeClient`)."""

    async def explain(
        self, model: str, version: str | None, x: Array, request_id: str | None, headers: Mapping[str, str]
    ) -> Any:
        """The handler's JSON explanations of the batch ``x``."""
        ...


@dataclass(frozen=True)
class ExplainLimits:
    """Bounds of one explanation request (from the gateway settings)."""

    steps: int = 32
    """Steps used when the request names none."""
    max_steps: int = 128
    """Most steps a request may ask for (400 above)."""
    max_images: int = 1
    """Images per request (413 above)."""

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= self.max_steps <= HANDLER_MAX_STEPS:
            raise ValueError(
                f"explain steps must satisfy 1 <= steps ({self.steps}) <= max_steps ({self.max_steps}) "
                f"<= {HANDLER_MAX_STEPS}"
            )
        if not 1 <= self.max_images <= HANDLER_MAX_IMAGES:
            raise ValueError(f"explain max_images must be 1..{HANDLER_MAX_IMAGES}, got {self.max_images}")


@dataclass(frozen=True)
class Explanation:
    """Attributions of N images, as the TorchServe handler computed them."""

    mv: ModelVersion
    backend: str
    steps: int
    targets: list[int]
    """Explained class index per image (its prediction unless the request named one)."""
    logits: Array
    """float32 ``[N, classes]``."""
    attributions: Array
    """float32 ``[N, C, H, W]``, like the model input."""
    deltas: Array
    """Integrated Gradients' convergence delta per image (float32 ``[N]``)."""
    backend_s: float

    def label(self, index: int) -> str:
        labels = self.mv.labels
        return labels[index] if index < len(labels) else str(index)

    def probabilities(self) -> Array:
        z = self.logits.astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out: Array = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return out


class Explainer:
    """Runs explanations on a model's TorchServe backend (see module doc)."""

    def __init__(self, gateway: Gateway, limits: ExplainLimits) -> None:
        self.gateway = gateway
        self.limits = limits

    def backends(self, model: str) -> list[str]:
        """The model's backends that can explain (TorchServe protocol), in routing order."""
        route = self.gateway.route(model)
        protocols = self.gateway.routing.backends
        return [ref.name for ref in route.backends if protocols[ref.name].protocol == "torchserve"]

    def steps(self, raw: str | None) -> int:
        """The requested step count (``None``/empty = the default), 400 outside 1..max_steps."""
        if raw is None or not str(raw).strip():
            return self.limits.steps
        try:
            steps = int(raw)
        except ValueError:
            raise BadRequestError(f"steps must be an integer, got '{str(raw)[:40]}'") from None
        if not 1 <= steps <= self.limits.max_steps:
            raise BadRequestError(f"steps must be between 1 and {self.limits.max_steps}, got {steps}")
        return steps

    @staticmethod
    def target(mv: ModelVersion, raw: str | None) -> int | None:
        """The class to explain: a label (``"7"``, ``"Sneaker"``) or a class index; None = predicted."""
        if raw is None or not str(raw).strip():
            return None
        raw = str(raw).strip()
        if raw in mv.labels:
            return mv.labels.index(raw)
        classes = len(mv.labels) or mv.output.shape[-1]
        if raw.isdigit() and int(raw) < classes:
            return int(raw)
        shown = ", ".join(mv.labels) if mv.labels else f"0..{classes - 1}"
        raise BadRequestError(f"target '{raw[:40]}' is not a class of model '{mv.name}' ({shown})")

    def _client(self, model: str, backend: str | None) -> tuple[str, ExplainingClient]:
        names = self.backends(model)
        if not names:
            raise ModelNotFoundError(
                f"model '{model}' has no TorchServe backend: explanations are computed by "
                "TorchServe's handler"
            )
        if backend:
            if backend not in names:
                raise UnknownBackendError(
                    f"backend '{backend}' does not explain model '{model}' (explaining backends: "
                    f"{', '.join(names)})"
                )
            names = [backend]
        states = [self.gateway.backends[n] for n in names]
        for state in states:
            if state.routable() and isinstance(state.client, ExplainingClient):
                return state.name, state.client
        health = ", ".join(f"{s.name}: {s.health_label()}" for s in states)
        raise ModelNotReadyError(f"no healthy backend to explain model '{model}' ({health})")

    def check_count(self, images: int) -> None:
        """413 when a request holds more images than an explanation may take."""
        if images > self.limits.max_images:
            raise PayloadTooLargeError(
                f"explanations take at most {self.limits.max_images} image(s) per request, got {images}"
            )

    async def explain(
        self,
        mv: ModelVersion,
        version: str | None,
        x: Array,
        *,
        steps: int,
        target: int | None = None,
        backend: str | None = None,
        request_id: str | None = None,
    ) -> Explanation:
        """Attributions of ``x`` (float32 ``[N, C, H, W]``, already preprocessed)."""
        self.check_count(x.shape[0])
        expected = mv.input.shape
        if x.dtype != np.float32 or x.ndim != len(expected) or x.shape[0] < 1 or any(
            e >= 0 and e != d for e, d in zip(expected[1:], x.shape[1:], strict=True)
        ):
            raise BadRequestError(
                f"input '{mv.input.name}' must be FP32 {expected} with at least one row, "
                f"got {x.dtype} {list(x.shape)}"
            )
        name, client = self._client(mv.name, backend)
        headers = {"X-Explain-Steps": str(steps)}
        if target is not None:
            headers["X-Explain-Target"] = str(target)
        start = time.perf_counter()
        answer = await client.explain(mv.name, version, x, request_id, headers)
        backend_s = time.perf_counter() - start
        return self._parse(answer, mv, name, x, backend_s)

    @staticmethod
    def _parse(answer: Any, mv: ModelVersion, backend: str, x: Array, backend_s: float) -> Explanation:
        """The handler's JSON, checked against the request (502 when it does not fit)."""
        try:
            rows = answer["explanations"]
            if len(rows) != x.shape[0]:
                raise ValueError(f"{len(rows)} explanations for {x.shape[0]} images")
            attributions = np.asarray([r["attributions"] for r in rows], dtype=np.float32)
            logits = np.asarray([r["logits"] for r in rows], dtype=np.float32)
            targets = [int(r["target"]) for r in rows]
            deltas = np.asarray([r.get("convergence_delta", np.nan) for r in rows], dtype=np.float32)
            steps = int(answer["steps"])
            if attributions.shape != x.shape or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"attributions {list(attributions.shape)} for input {list(x.shape)}")
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"backend '{backend}' answered unusable explanations: {exc}") from None
        return Explanation(mv, backend, steps, targets, logits, attributions, deltas, backend_s)
