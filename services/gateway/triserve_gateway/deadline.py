"""One end-to-end deadline per request (HTTP-free).

The HTTP layer builds a :class:`Deadline` when a request arrives (the gateway's
``request_timeout_ms``, or less when the client asks for less with ``X-Request-Timeout``);
every wait in the core — admission queue, batching, each backend attempt — is bounded by
:meth:`Deadline.remaining`. When it passes, the request ends with
:class:`DeadlineExceededError` (504).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from triserve_common.errors import BadRequestError, TriserveError


class DeadlineExceededError(TriserveError):
    """The request's end-to-end deadline passed (504); never retried."""

    status_code = 504


class Deadline:
    """A point on the monotonic clock after which the request is abandoned."""

    __slots__ = ("_clock", "budget_s", "expires_at")

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.budget_s = budget_s
        self.expires_at = clock() + budget_s

    def remaining(self) -> float:
        """Seconds left (0 when passed)."""
        return max(0.0, self.expires_at - self._clock())

    def expired(self) -> bool:
        return self._clock() >= self.expires_at

    def exceeded(self, where: str) -> DeadlineExceededError:
        """The error to raise when the deadline passed while ``where`` (e.g. "queued for admission")."""
        return DeadlineExceededError(
            f"request deadline of {self.budget_s * 1e3:.0f} ms passed while {where}"
        )


def request_budget_s(header: str | None, default_ms: float) -> float:
    """The deadline budget of a request: ``default_ms``, or the client's ``X-Request-Timeout`` (ms)
    when it asks for less. A malformed or non-positive header is a client error (400)."""
    if header is None or not header.strip():
        return default_ms / 1000.0
    try:
        asked = float(header)
    except ValueError:
        raise BadRequestError(
            f"X-Request-Timeout must be a number of milliseconds, got '{header[:40]}'"
        ) from None
    if not asked > 0:  # also NaN
        raise BadRequestError(
            f"X-Request-Timeout must be a positive number of milliseconds, got '{header[:40]}'"
        )
    return min(asked, default_ms) / 1000.0
