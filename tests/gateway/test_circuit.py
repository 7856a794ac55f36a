"""Circuit breaker: ejection after consecutive failures, half-open single probe, recovery."""

from __future__ import annotations

from triserve_gateway.circuit import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures_only() -> None:
    cb = CircuitBreaker(failure_threshold=3, open_s=5, clock=Clock())
    cb.record_failure()
    cb.record_failure()
    cb.record_success()  # resets the streak
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CircuitState.CLOSED and cb.acquire()
    cb.record_failure()
    assert cb.state is CircuitState.OPEN
    assert not cb.available() and not cb.acquire()


def test_half_open_admits_one_probe_then_closes_on_success() -> None:
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=1, open_s=5, clock=clock)
    cb.record_failure()
    clock.now = 4.9
    assert not cb.acquire()
    clock.now = 5.0
    assert cb.acquire()  # the probe
    assert cb.state is CircuitState.HALF_OPEN
    assert not cb.acquire()  # only one probe at a time
    cb.record_success()
    assert cb.state is CircuitState.CLOSED and cb.acquire() and cb.acquire()


def test_failed_probe_reopens_and_restarts_timer() -> None:
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=2, open_s=5, clock=clock)
    cb.record_failure()
    cb.record_failure()
    clock.now = 6
    assert cb.acquire()
    cb.record_failure()  # a single failure when half-open re-opens
    assert cb.state is CircuitState.OPEN
    clock.now = 10
    assert not cb.acquire()
    clock.now = 11
    assert cb.acquire()


def test_stuck_probe_does_not_block_forever() -> None:
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=1, open_s=2, clock=clock)
    cb.record_failure()
    clock.now = 2
    assert cb.acquire()  # probe whose outcome never arrives
    clock.now = 3
    assert not cb.acquire()
    clock.now = 4
    assert cb.acquire()
