"""Routing strategies: pick one backend among the routable candidates (HTTP-free).

Strategies (``strategy:`` in the routing config):

- ``p2c`` (the default): power of two choices over a load-and-latency cost, as Finagle's P2C
  with its EWMA load metric and Envoy's LEAST_REQUEST do: the cheaper of two candidates drawn at
  random wins, where ``cost = latency EWMA x (requests in flight + 1) / weight``. Traffic follows
  capacity: a backend that answers slowly or has many requests in flight loses its share, and the
  weight says how much more one backend is worth than another. Pools of up to ``full_scan_max``
  backends are compared in full instead: the in-flight counts are exact in one gateway process, so
  there is no herd to avoid, and a random pair out of three would hand the second-best backend a
  third of the traffic however slow it is (measured: Paddle took 1/3 of the requests at one client).
  A backend never measured costs nothing, so it is tried first; an idle backend's estimate decays
  towards zero (time constant ``idle_decay_s``), so a backend that was slow once is probed again.
- ``weighted``: random, proportional to each backend's weight (canary percentages).
- ``round-robin``: rotate through the candidates in turn.
- ``least-outstanding``: fewest requests in flight at the gateway (ties broken at random).
- ``fastest``: lowest moving-average backend latency (EWMA); backends without a measurement
  are tried first and a small ``explore`` share goes to a random one so estimates stay fresh.

The caller filters candidates by health and circuit state; backends of weight 0 take no
regular traffic but stay failover targets (see :mod:`triserve_gateway.gateway`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

StrategyName = Literal["p2c", "weighted", "round-robin", "least-outstanding", "fastest"]
STRATEGIES: tuple[StrategyName, ...] = ("p2c", "weighted", "round-robin", "least-outstanding", "fastest")
DEFAULT_STRATEGY: StrategyName = "p2c"


@dataclass
class BackendStats:
    """Live figures of one backend that strategies read: in-flight count and latency EWMA.

    The latency is what a request routed there experienced (queueing in the batcher included).
    """

    name: str
    outstanding: int = 0
    ewma_s: float | None = None
    alpha: float = 0.2
    observed_at: float = 0.0
    """``time.monotonic()`` of the last observation."""

    def observe_latency(self, seconds: float, now: float | None = None) -> None:
        """Fold one request's latency on this backend into the moving average."""
        if self.ewma_s is None:
            self.ewma_s = seconds
        else:
            self.ewma_s += self.alpha * (seconds - self.ewma_s)
        self.observed_at = time.monotonic() if now is None else now


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
class P2CStrategy:
    """Power of two choices over ``latency EWMA x (in flight + 1) / weight`` (see module doc)."""

    rng: random.Random = field(default_factory=random.Random)
    full_scan_max: int = 8
    """Pools up to this size are compared in full; larger ones by a random pair."""
    idle_decay_s: float = 5.0
    """Time constant with which an idle backend's latency estimate decays towards zero."""
    clock: Callable[[], float] = time.monotonic

    def cost(self, cand: Candidate, now: float) -> float:
        """The load-and-latency cost of sending one more request to ``cand`` now."""
        stats = cand.stats
        if stats.ewma_s is None:
            return 0.0
        latency = stats.ewma_s
        if stats.outstanding == 0 and self.idle_decay_s > 0:
            latency *= math.exp(-max(0.0, now - stats.observed_at) / self.idle_decay_s)
        return latency * (stats.outstanding + 1) / max(cand.weight, 1e-9)

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        if n <= self.full_scan_max:
            pool = candidates
        else:
            i = self.rng.randrange(n)
            j = self.rng.randrange(n - 1)
            pool = (candidates[i], candidates[j + 1 if j >= i else j])
        now = self.clock()
        costs = [self.cost(c, now) for c in pool]
        low = min(costs)
        best = [c for c, cost in zip(pool, costs, strict=True) if cost == low]
        return best[0] if len(best) == 1 else self.rng.choice(best)


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
    if name == "p2c":
        return P2CStrategy(rng)
    if name == "weighted":
        return WeightedStrategy(rng)
    if name == "round-robin":
        return RoundRobinStrategy()
    if name == "least-outstanding":
        return LeastOutstandingStrategy(rng)
    if name == "fastest":
        return FastestStrategy(rng=rng)
    raise ValueError(f"unknown routing strategy '{name}' (known: {', '.join(STRATEGIES)})")
