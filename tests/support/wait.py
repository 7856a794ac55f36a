"""Waiting without wall-clock assertions: poll a condition until it holds or a generous deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEADLINE_S = 30.0
"""Long enough for a loaded shared 2-core box; a test only waits this long when it is failing."""


async def eventually(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``condition`` on the event loop until it holds; fail naming ``what`` after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s:.0f}s: {what}")
        await asyncio.sleep(0.01)
