"""The model's outputs as answers, for every transport: class labels, softmax probabilities, top k."""

from __future__ import annotations

from typing import Any

import numpy as np

from triserve_gateway.models import ModelVersion

Array = np.ndarray[Any, Any]


def class_count(mv: ModelVersion) -> int:
    """Number of classes: the manifest's labels, else the output's last dimension."""
    return len(mv.labels) or mv.output.shape[-1]


def class_labels(mv: ModelVersion, classes: int) -> list[str]:
    """The manifest's labels, or the class indices as strings when it has none."""
    return mv.labels or [str(i) for i in range(classes)]


def softmax(logits: Array) -> Array:
    """Row-wise softmax in float64, stable for large logits."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs


def predicted_labels(mv: ModelVersion, logits: Array) -> list[str]:
    """Per row: the label of the most probable class."""
    labels = class_labels(mv, logits.shape[1])
    return [labels[int(i)] for i in logits.argmax(axis=1)]


def topk_of(mv: ModelVersion, logits: Array, k: int) -> list[dict[str, float]]:
    """Per row: the k most probable labels → softmax probability, most probable first."""
    probs = softmax(logits)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    labels = class_labels(mv, logits.shape[1])
    return [{labels[i]: float(p[i]) for i in row} for p, row in zip(probs, order, strict=True)]
