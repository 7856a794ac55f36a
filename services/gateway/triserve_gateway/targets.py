"""What a request runs on and what it gets back: a routed model's live route (:class:`RouteState`),
the resolved :class:`Target` of one request, and its :class:`RoutedResult`; why a backend does not
serve a version (:class:`Absence`). HTTP-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from triserve_gateway.admission import Admission
from triserve_gateway.config import ModelRoute
from triserve_gateway.models import ModelVersion
from triserve_gateway.retry_budget import RetryBudget
from triserve_gateway.routing import Candidate, Strategy

Array = np.ndarray[Any, Any]


@dataclass
class RouteState:
    """A routed model's config, its strategy instance and its candidate backends."""

    config: ModelRoute
    strategy: Strategy
    candidates: list[Candidate]
    by_name: dict[str, Candidate] = field(default_factory=dict)
    admission: Admission | None = None
    budget: RetryBudget = field(default_factory=RetryBudget)


@dataclass(frozen=True)
class Absence:
    """Why a backend of a model's route does not serve one of its versions."""

    reason: str
    permanent: bool = False
    """True when it never can (the manifest rules it out), False while it does not hold it now."""


@dataclass(frozen=True)
class Target:
    """What one request runs on, resolved once (:meth:`Gateway.resolve`): route and model version."""

    model: str
    version: str | None
    """The version the backends are asked for (the model's default when the client named none);
    part of the batching key."""
    mv: ModelVersion
    route: RouteState
    placed: frozenset[str] | None = None
    """Backends holding this version (None = every backend of the route)."""


@dataclass(frozen=True)
class RoutedResult:
    """The output rows of one request and how they were obtained."""

    value: Array
    backend: str
    model_version: str
    queue_s: float
    backend_s: float
    attempts: int


__all__ = ["Absence", "RouteState", "RoutedResult", "Target"]
