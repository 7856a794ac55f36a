"""Routing strategies: pick one backend among the routable candidates (HTTP-free).

Strategies (``strategy:`` in the routing config):

- ``weighted``: random, proportional to each backend's weight (canary percentages).
- ``round-robin``: rotate through the candidates in turn.
- ``least-outstanding``: fewest requests in flight at the gateway (ties broken at random).
- ``fastest``: lowest moving-average backend latency (EWMA); backends without a measurement
  are tried first and a small ``explore`` share goes to a random one so estimates stay fresh.

The caller filters candidates by health and circuit state; backends of weight 0 take no
regular traffic but stay failover targets (see :mod:`triserve_gateway.gateway`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

StrategyName = Literal["weighted", "round-robin", "least-outstanding", "fastest"]
STRATEGIES: tuple[StrategyName, ...] = ("weighted", "round-robin", "least-outstanding", "fastest")


@dataclass
class BackendStats:
    """Live figures of one backend that strategies read: in-flight count and latency EWMA."""

    name: str
    outstanding: int = 0
    ewma_s: float | None = None
    alpha: float = 0.2

    def observe_latency(self, seconds: float) -> None:
        """Fold one backend call's duration into the moving average."""
        if self.ewma_s is None:
            self.ewma_s = seconds
        else:
            self.ewma_s += self.alpha * (seconds - self.ewma_s)


@dataclass(frozen=True)
class Candidate:
    """A backend eligible for one request, with its configured weight for this model."""

    stats: BackendStats
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.stats.name


class Strategy(Protocol):
    """Chooses one of a non-empty sequence of candidates."""

    def choose(self, candidates: Sequence[Candidate]) -> Candidate: ...


@dataclass
class WeightedStrategy:
    rng: random.Random = field(default_factory=random.Random)

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        weights = [max(c.weight, 0.0) for c in candidates]
        total = sum(weights)
        if total <= 0:
            return self.rng.choice(list(candidates))
        point = self.rng.random() * total
        for cand, weight in zip(candidates, weights, strict=True):
            point -= weight
            if point < 0:
                return cand
        return candidates[-1]


@dataclass
class RoundRobinStrategy:
    _counter: int = 0

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        ordered = sorted(candidates, key=lambda c: c.name)
        cand = ordered[self._counter % len(ordered)]
        self._counter += 1
        return cand


@dataclass
class LeastOutstandingStrategy:
    rng: random.Random = field(default_factory=random.Random)

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        low = min(c.stats.outstanding for c in candidates)
        best = [c for c in candidates if c.stats.outstanding == low]
        return best[0] if len(best) == 1 else self.rng.choice(best)


@dataclass
class FastestStrategy:
    explore: float = 0.05
    rng: random.Random = field(default_factory=random.Random)

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        unmeasured = [c for c in candidates if c.stats.ewma_s is None]
        if unmeasured:
            return unmeasured[0]
        if len(candidates) > 1 and self.rng.random() < self.explore:
            return self.rng.choice(list(candidates))
        return min(candidates, key=lambda c: c.stats.ewma_s or 0.0)


def make_strategy(name: StrategyName, rng: random.Random | None = None) -> Strategy:
    """A fresh strategy instance (each model gets its own, so round-robin counters are per model)."""
    rng = rng or random.Random()
    if name == "weighted":
        return WeightedStrategy(rng)
    if name == "round-robin":
        return RoundRobinStrategy()
    if name == "least-outstanding":
        return LeastOutstandingStrategy(rng)
    if name == "fastest":
        return FastestStrategy(rng=rng)
    raise ValueError(f"unknown routing strategy '{name}' (known: {', '.join(STRATEGIES)})")
