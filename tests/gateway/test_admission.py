"""Admission control, deadlines, retry budget and attempt timeouts: the pure logic of overload handling."""

from __future__ import annotations

import asyncio

import pytest

from triserve_common.errors import BadRequestError
from triserve_gateway.admission import Admission, OverloadedError
from triserve_gateway.attempts import AttemptTimeouts
from triserve_gateway.deadline import Deadline, DeadlineExceededError, request_budget_s
from triserve_gateway.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_admission_queues_then_refuses_at_once_when_full() -> None:
    changes: list[tuple[int, int]] = []
    rejected: list[str] = []
    gate = Admission("m", max_in_flight=2, max_queue=1, retry_after_s=2.5,
                     on_change=lambda f, q: changes.append((f, q)), on_reject=rejected.append)
    deadline = Deadline(30)
    await gate.acquire(deadline)
    await gate.acquire(deadline)
    waiter = asyncio.create_task(gate.acquire(deadline))
    await asyncio.sleep(0)
    assert (gate.in_flight, gate.queued) == (2, 1)
    with pytest.raises(OverloadedError) as info:
        await gate.acquire(deadline)
    assert info.value.status_code == 503 and info.value.headers == {"Retry-After": "3"}
    assert "overloaded" in info.value.message and rejected == ["queue_full"]
    gate.release()  # the slot moves to the waiter
    await waiter
    assert (gate.in_flight, gate.queued) == (2, 0)
    gate.release()
    gate.release()
    assert (gate.in_flight, gate.queued) == (0, 0)
    assert changes[-1] == (0, 0) and (2, 1) in changes


async def test_admission_is_fifo() -> None:
    gate = Admission("m", max_in_flight=1, max_queue=5)
    deadline = Deadline(30)
    await gate.acquire(deadline)
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.acquire(deadline)
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(4)]
    await asyncio.sleep(0)
    for _ in range(4):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_cancelled_waiter_leaves_the_queue_and_a_handed_slot_is_passed_on() -> None:
    gate = Admission("m", max_in_flight=1, max_queue=2)
    deadline = Deadline(30)
    await gate.acquire(deadline)
    first = asyncio.create_task(gate.acquire(deadline))
    second = asyncio.create_task(gate.acquire(deadline))
    await asyncio.sleep(0)
    first.cancel()  # the client went away while queued
    await asyncio.gather(first, return_exceptions=True)
    assert gate.queued == 1
    gate.release()
    await second
    assert (gate.in_flight, gate.queued) == (1, 0)
    # a slot handed to a waiter that is cancelled in the same tick moves on, not lost
    third = asyncio.create_task(gate.acquire(deadline))
    await asyncio.sleep(0)
    gate.release()
    third.cancel()
    await asyncio.gather(third, return_exceptions=True)
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_queued_request_gets_504_when_its_deadline_passes() -> None:
    rejected: list[str] = []
    gate = Admission("m", max_in_flight=1, max_queue=1, on_reject=rejected.append)
    await gate.acquire(Deadline(30))
    with pytest.raises(DeadlineExceededError) as info:
        await gate.acquire(Deadline(0.01))
    assert info.value.status_code == 504 and "queued for admission" in info.value.message
    assert gate.queued == 0 and rejected == ["deadline"]


def test_deadline_and_client_timeout_header() -> None:
    clock = Clock()
    d = Deadline(2.0, clock)
    assert d.remaining() == 2.0 and not d.expired()
    clock.now += 2.5
    assert d.remaining() == 0.0 and d.expired()
    assert request_budget_s(None, 5000) == 5.0
    assert request_budget_s("250", 5000) == 0.25
    assert request_budget_s("60000", 5000) == 5.0  # a client may ask for less, never more
    for bad in ("soon", "0", "-5", "nan"):
        with pytest.raises(BadRequestError, match="X-Request-Timeout"):
            request_budget_s(bad, 5000)


def test_retry_budget_caps_retries_at_a_share_of_requests() -> None:
    clock = Clock()
    budget = RetryBudget(percent=0.2, min_per_s=0, ttl_s=10, clock=clock)
    assert not budget.try_withdraw()  # no traffic, no floor: nothing to spend
    for _ in range(100):
        budget.deposit()
    granted = sum(budget.try_withdraw() for _ in range(50))
    assert granted == 20
    clock.now += 11  # the window slid past every deposit and withdrawal
    assert budget.balance() == 0.0


def test_retry_budget_floor_lets_a_quiet_gateway_fail_over() -> None:
    clock = Clock()
    budget = RetryBudget(percent=0.2, min_per_s=1, ttl_s=5, clock=clock)
    assert sum(budget.try_withdraw() for _ in range(10)) == 5
    clock.now += 3
    assert not budget.try_withdraw()
    clock.now += 3  # the first withdrawals left the window
    assert budget.try_withdraw()


def test_attempt_timeout_follows_observed_latency_within_bounds() -> None:
    t = AttemptTimeouts(min_s=0.1, max_s=0.8, k=4)
    assert t.timeout("a") == 0.8  # unmeasured: the ceiling
    for _ in range(50):
        t.observe("a", 0.005)
    assert t.timeout("a") == 0.1  # fast and steady: the floor
    for i in range(50):
        t.observe("b", 0.05 + 0.05 * (i % 2))
    assert 0.1 < t.timeout("b") < 0.8  # jittery: mean + 4 deviations
    for _ in range(50):
        t.observe("c", 2.0)
    assert t.timeout("c") == 0.8
    assert t.describe("a")["attempt_timeout_ms"] == 100.0
