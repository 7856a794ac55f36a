"""One background task that repeats a step at an interval (HTTP-free).

The gateway's health checks, reconciliation and the registry's publisher and follower all run
this way: a failing round is logged and the next one runs; ``stop`` cancels and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

Step = Callable[[], Awaitable[bool | None]]
"""One round; returning ``False`` ends the repetition (anything else goes on)."""


class Periodic:
    """Runs ``step`` every ``interval_s`` (first after one interval, or at once with ``first_now``)."""

    def __init__(
        self, step: Step, interval_s: float, error: str, log: logging.Logger, *, first_now: bool = False
    ) -> None:
        self.step = step
        self.interval_s = interval_s
        self.error = error
        """Logged (with the traceback) when a round raises."""
        self.log = log
        self.first_now = first_now
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start repeating in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Cancel the repetition and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        if not self.first_now:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                if await self.step() is False:
                    return
            except Exception:  # keep repeating whatever happens
                self.log.exception(self.error)
            await asyncio.sleep(self.interval_s)
