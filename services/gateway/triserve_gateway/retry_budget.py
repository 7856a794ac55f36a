"""Retry budget (Finagle's ``RetryBudget``, Envoy's retry budgets): failover cannot multiply load.

Every request deposits ``percent`` of a token; every retry withdraws one. Over a sliding window
of ``ttl_s`` seconds the balance is::

    percent * requests + min_per_s * ttl_s - retries

so retries stay under ``percent`` (default 20 %) of the traffic, plus a small floor of
``min_per_s`` retries per second so that a quiet gateway can still fail over. When the balance is
below one token the retry is refused and the request ends with the error it had (HTTP-free,
clock-injectable for tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RetryBudget:
    """Token budget for retries over a sliding window of one-second buckets."""

    def __init__(
        self,
        percent: float = 0.2,
        min_per_s: float = 10.0,
        ttl_s: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if percent < 0 or min_per_s < 0 or ttl_s < 1:
            raise ValueError("percent and min_per_s must be >= 0 and ttl_s >= 1")
        self.percent = percent
        self.min_per_s = min_per_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._requests = [0] * ttl_s
        self._retries = [0] * ttl_s
        self._second = int(clock())

    def _advance(self) -> int:
        now = int(self._clock())
        if now != self._second:
            for s in range(max(self._second + 1, now - self.ttl_s + 1), now + 1):
                i = s % self.ttl_s
                self._requests[i] = 0
                self._retries[i] = 0
            self._second = now
        return now % self.ttl_s

    def deposit(self) -> None:
        """Count one request (a first attempt)."""
        self._requests[self._advance()] += 1

    def balance(self) -> float:
        """Retries that may still be made now."""
        self._advance()
        return (
            self.percent * sum(self._requests)
            + self.min_per_s * self.ttl_s
            - sum(self._retries)
        )

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is exhausted."""
        if self.balance() < 1.0:
            return False
        self._retries[self._advance()] += 1
        return True
