"""Routing strategies (pure)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from triserve_gateway.routing import (
    BackendStats,
    Candidate,
    FastestStrategy,
    LeastOutstandingStrategy,
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
