"""Routing strategies (pure)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from triserve_gateway.config import BackendRef, ModelRoute
from triserve_gateway.routing import (
    DEFAULT_STRATEGY,
    BackendStats,
    Candidate,
    FastestStrategy,
    LeastOutstandingStrategy,
    P2CStrategy,
    RoundRobinStrategy,
    WeightedStrategy,
    make_strategy,
)


def cands(**weights: float) -> list[Candidate]:
    return [Candidate(BackendStats(n), w) for n, w in weights.items()]


def test_weighted_follows_canary_percentages() -> None:
    strategy = WeightedStrategy(random.Random(1))
    cs = cands(onnx=80, paddle=15, torchserve=5)
    counts = Counter(strategy.choose(cs).name for _ in range(20000))
    assert counts["onnx"] / 20000 == pytest.approx(0.80, abs=0.02)
    assert counts["paddle"] / 20000 == pytest.approx(0.15, abs=0.02)
    assert counts["torchserve"] / 20000 == pytest.approx(0.05, abs=0.01)


def test_weighted_with_all_zero_weights_still_chooses() -> None:
    strategy = WeightedStrategy(random.Random(1))
    assert strategy.choose(cands(a=0, b=0)).name in ("a", "b")


def test_round_robin_rotates() -> None:
    strategy = RoundRobinStrategy()
    cs = cands(c=1, a=1, b=1)
    assert [strategy.choose(cs).name for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_least_outstanding_prefers_idle_backend() -> None:
    cs = cands(a=1, b=1, c=1)
    cs[0].stats.outstanding = 4
    cs[1].stats.outstanding = 1
    cs[2].stats.outstanding = 2
    assert LeastOutstandingStrategy(random.Random(0)).choose(cs).name == "b"


def test_fastest_explores_unmeasured_then_picks_lowest_ewma() -> None:
    strategy = FastestStrategy(explore=0.0)
    cs = cands(a=1, b=1)
    cs[0].stats.observe_latency(0.010)
    assert strategy.choose(cs).name == "b"  # unmeasured first
    cs[1].stats.observe_latency(0.002)
    assert strategy.choose(cs).name == "b"
    for _ in range(30):
        cs[1].stats.observe_latency(0.050)  # b got slow: the moving average follows
    assert strategy.choose(cs).name == "a"


def test_ewma_moves_towards_new_samples() -> None:
    stats = BackendStats("a", alpha=0.5)
    stats.observe_latency(1.0)
    stats.observe_latency(3.0)
    assert stats.ewma_s == pytest.approx(2.0)


def test_make_strategy_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy"):
        make_strategy("random")  # type: ignore[arg-type]


class Clock:
    """A settable clock for the strategies that read time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_p2c_is_the_default_strategy() -> None:
    assert DEFAULT_STRATEGY == "p2c"
    assert ModelRoute(backends=[BackendRef(name="onnx")]).strategy == "p2c"
    assert isinstance(make_strategy("p2c"), P2CStrategy)


def test_p2c_tries_unmeasured_backends_first() -> None:
    clock = Clock()
    strategy = P2CStrategy(random.Random(0), clock=clock)
    cs = cands(a=1, b=1)
    cs[0].stats.observe_latency(0.001, clock.now)
    assert {strategy.choose(cs).name for _ in range(50)} == {"b"}


def test_p2c_cost_is_latency_times_load_over_weight() -> None:
    clock = Clock()
    strategy = P2CStrategy(random.Random(0), clock=clock)
    fast, slow = cands(fast=1, slow=1)
    fast.stats.observe_latency(0.002, clock.now)
    slow.stats.observe_latency(0.010, clock.now)
    fast.stats.outstanding = slow.stats.outstanding = 1
    assert strategy.cost(fast, clock.now) == pytest.approx(0.004)
    assert strategy.choose([fast, slow]).name == "fast"
    fast.stats.outstanding = 9  # 0.002 x 10 = 0.020 > 0.010 x 2: the fast one is overloaded
    assert strategy.choose([fast, slow]).name == "slow"
    heavy = Candidate(slow.stats, weight=4)  # weight scales the cost down
    assert strategy.cost(heavy, clock.now) == pytest.approx(0.005)
    assert strategy.choose([fast, heavy]).name == "slow"


def test_p2c_compares_small_pools_in_full() -> None:
    clock = Clock()
    strategy = P2CStrategy(random.Random(3), clock=clock)
    cs = cands(a=1, b=1, c=1)
    for cand, latency in zip(cs, (0.001, 0.002, 0.050), strict=True):
        cand.stats.observe_latency(latency, clock.now)
        cand.stats.outstanding = 1
    assert Counter(strategy.choose(cs).name for _ in range(300)) == {"a": 300}


def test_p2c_draws_a_random_pair_in_large_pools() -> None:
    clock = Clock()
    strategy = P2CStrategy(random.Random(3), full_scan_max=2, clock=clock)
    cs = cands(a=1, b=1, c=1)
    for cand, latency in zip(cs, (0.001, 0.002, 0.050), strict=True):
        cand.stats.observe_latency(latency, clock.now)
        cand.stats.outstanding = 1
    counts = Counter(strategy.choose(cs).name for _ in range(3000))
    # a wins both pairs it is in (2/3), b wins the pair against c (1/3), c never wins
    assert counts["a"] / 3000 == pytest.approx(2 / 3, abs=0.03)
    assert counts["b"] / 3000 == pytest.approx(1 / 3, abs=0.03)
    assert counts["c"] == 0


def test_p2c_idle_estimate_decays_so_a_slow_backend_is_probed_again() -> None:
    clock = Clock()
    strategy = P2CStrategy(random.Random(0), idle_decay_s=5.0, clock=clock)
    fast, once_slow = cands(fast=1, once_slow=1)
    fast.stats.observe_latency(0.002, clock.now)
    fast.stats.outstanding = 1
    once_slow.stats.observe_latency(1.0, clock.now)
    assert strategy.choose([fast, once_slow]).name == "fast"
    clock.now += 40.0  # idle for 8 time constants: 1 s x e^-8 = 0.34 ms < 2 ms x 2
    assert strategy.choose([fast, once_slow]).name == "once_slow"
    once_slow.stats.outstanding = 1  # busy backends do not decay
    assert strategy.choose([fast, once_slow]).name == "fast"
