"""hedging.first_done: the attempts loop's wait for the first finished attempt or the hedge timer."""

from __future__ import annotations

import asyncio

import pytest

from triserve_gateway.hedging import first_done


async def test_returns_what_is_done_already_without_waiting() -> None:
    loop = asyncio.get_running_loop()
    done, pending = loop.create_future(), loop.create_future()
    done.set_result(1)
    assert await first_done([pending, done], 3600) == [done]
    pending.cancel()


async def test_wakes_when_one_finishes_and_leaves_the_others_running() -> None:
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    loop.call_soon(b.set_result, 2)
    assert await first_done([a, b], 3600) == [b]
    assert not a.done()
    a.set_result(1)  # its callback was removed: nothing wakes a waiter that is gone
    assert await first_done([a], 0) == [a]


async def test_the_timer_ends_the_wait_with_nothing_done() -> None:
    loop = asyncio.get_running_loop()
    a = loop.create_future()
    assert await first_done([a], 0.01) == []
    assert not a.done()
    a.cancel()


async def test_a_cancelled_waiter_leaves_the_futures_alone() -> None:
    loop = asyncio.get_running_loop()
    a = loop.create_future()
    task = asyncio.ensure_future(first_done([a], 3600))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not a.done()
    a.set_result(1)
