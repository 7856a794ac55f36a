"""Explanations: TorchServe's ``POST /explanations/{model}`` answered with Captum Integrated Gradients.

Part of triserve's TorchServe handler (``mnist_handler.py`` and the modules beside it, packed side by
side into every ``.mar``).

TorchServe's frontend marks each request that came in through ``/explanations`` with the request
header ``explain: True``; ``MnistHandler.handle`` answers those here, per request (explanations and
predictions may share a batch). The body is an image or a ``.npy`` float32 [N,C,H,W], as for
predictions, with at most MAX_EXPLAIN_IMAGES images. Optional request headers:

* ``X-Explain-Steps``: Integrated Gradients steps, 1..MAX_EXPLAIN_STEPS (default DEFAULT_EXPLAIN_STEPS);
* ``X-Explain-Target``: the class index to explain (default: each image's predicted class).

Cost is bounded: steps x images forward+backward passes, run in chunks of EXPLAIN_INTERNAL_BATCH rows.
The baseline is the input's background (pixel value 0 after preprocessing: ``-mean / std``).
The answer is JSON::

    {"method": "integrated_gradients", "steps": 32, "baseline": [-0.4242],
     "explanations": [{"target": 7, "logits": [10 floats], "attributions": [C][H][W] floats,
                       "convergence_delta": 0.0012}]}

captum (~3 s to import, matplotlib included) is imported by a background thread when the worker starts,
so neither predictions nor the first explanation wait for it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np
import torch
from handler_requests import request_error, set_content_type

logger = logging.getLogger(__name__)

EXPLAIN_HEADER = "explain"
EXPLAIN_STEPS_HEADER = "x-explain-steps"
EXPLAIN_TARGET_HEADER = "x-explain-target"
DEFAULT_EXPLAIN_STEPS = 32
MAX_EXPLAIN_STEPS = 256
MAX_EXPLAIN_IMAGES = 4
EXPLAIN_INTERNAL_BATCH = 64


def preload_captum() -> None:
    """Import captum off the request path (the first explanation would otherwise pay for it)."""
    try:
        importlib.import_module("captum.attr")
    except Exception:  # explanations will answer the error; predictions do not need captum
        logger.warning("captum cannot be imported: explanations will fail", exc_info=True)


def _request_header(context: Any, idx: int, name: str) -> str | None:
    """Request header ``name`` (case-insensitive) of request ``idx``, if TorchServe passed it."""
    getter = getattr(context, "get_all_request_header", None)
    if getter is None:
        return None
    try:
        headers = getter(idx) or {}
    except (IndexError, KeyError, AttributeError, TypeError):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and isinstance(value, str) and key.lower() == name:
            return value
    return None


def explain_indices(context: Any, count: int) -> set[int]:
    """Indices of the batch's requests that came in through ``/explanations``."""
    return {idx for idx in range(count) if _request_header(context, idx, EXPLAIN_HEADER) == "True"}


def _int_header(context: Any, idx: int, name: str, low: int, high: int, default: int | None) -> int | None:
    raw = _request_header(context, idx, name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise request_error(400, f"header {name} must be an integer, got '{raw[:40]}'") from None
    if not low <= value <= high:
        raise request_error(400, f"header {name} must be between {low} and {high}, got {value}")
    return value


def _baseline(spec: dict[str, Any], channels: int) -> list[float]:
    """The input's background per channel: pixel value 0 after preprocessing (``-mean / std``)."""
    mean = [float(m) for m in spec["mean"]] * (channels if len(spec["mean"]) == 1 else 1)
    std = [float(s) for s in spec["std"]] * (channels if len(spec["std"]) == 1 else 1)
    return [-m / s for m, s in zip(mean, std, strict=True)]


def explain_images(
    model: torch.jit.ScriptModule,
    x: np.ndarray,
    spec: dict[str, Any],
    context: Any,
    idx: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Integrated Gradients attributions of the images ``x`` (float32 [N,C,H,W]) for request ``idx``."""
    if x.shape[0] > MAX_EXPLAIN_IMAGES:
        raise request_error(
            413, f"explanations take at most {MAX_EXPLAIN_IMAGES} images per request, got {x.shape[0]}"
        )
    steps = _int_header(context, idx, EXPLAIN_STEPS_HEADER, 1, MAX_EXPLAIN_STEPS, DEFAULT_EXPLAIN_STEPS)
    assert steps is not None
    from captum.attr import IntegratedGradients  # preloaded by preload_captum()

    inputs = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    with torch.no_grad():
        logits = model(inputs)
    classes = int(logits.shape[1])
    chosen = _int_header(context, idx, EXPLAIN_TARGET_HEADER, 0, classes - 1, None)
    targets = [int(t) for t in logits.argmax(dim=1)] if chosen is None else [chosen] * x.shape[0]
    channels = x.shape[1]
    baseline = _baseline(spec, channels)
    baselines = torch.tensor(baseline, dtype=inputs.dtype, device=device).view(1, channels, 1, 1)
    attributions, delta = IntegratedGradients(model).attribute(
        inputs.requires_grad_(),
        baselines=baselines.expand_as(inputs).contiguous(),
        target=targets,
        n_steps=steps,
        internal_batch_size=EXPLAIN_INTERNAL_BATCH,
        return_convergence_delta=True,
    )
    set_content_type(context, idx, "application/json")
    return {
        "method": "integrated_gradients",
        "steps": steps,
        "baseline": baseline,
        "explanations": [
            {
                "target": target,
                "logits": [float(v) for v in row],
                "attributions": attr.detach().cpu().float().numpy().tolist(),
                "convergence_delta": float(d),
            }
            for target, row, attr, d in zip(
                targets, logits.cpu().float().numpy(), attributions, delta, strict=True
            )
        ],
    }
