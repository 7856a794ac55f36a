"""Periodic: repeats a step, survives a failing round, ends on False, stops on request."""

from __future__ import annotations

import asyncio
import logging

import pytest

from triserve_gateway.periodic import Periodic


async def test_a_failing_round_is_logged_and_the_next_runs_until_the_step_says_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []

    async def step() -> bool:
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise RuntimeError("round 2 breaks")
        return len(rounds) < 4

    periodic = Periodic(step, 0.001, "round failed", logging.getLogger("test.periodic"), first_now=True)
    periodic.start()
    for _ in range(2000):
        if len(rounds) >= 4:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.02)
    await periodic.stop()
    assert rounds == [0, 1, 2, 3]  # round 4 returned False: no fifth round
    assert [r.message for r in caplog.records if r.name == "test.periodic"] == ["round failed"]


async def test_without_first_now_the_first_round_waits_an_interval_and_stop_cancels_it() -> None:
    rounds: list[int] = []

    async def step() -> None:
        rounds.append(1)

    periodic = Periodic(step, 60.0, "never", logging.getLogger("test.periodic"))
    periodic.start()
    await asyncio.sleep(0.01)
    await periodic.stop()
    assert rounds == []
