"""Circuit breaker per backend: passive ejection after consecutive failures, half-open probing.

States::

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN   --(open_s elapsed; next acquire)-------------> HALF_OPEN (one probe request at a time)
    HALF_OPEN --probe succeeds--> CLOSED;  --probe fails--> OPEN (timer restarts)

HTTP-free and clock-injectable for tests. A probe that never reports back (e.g. its caller was
cancelled) stops blocking after ``open_s``, so a stuck probe cannot eject a backend forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker; call :meth:`acquire` before a request, then record its outcome."""

    def __init__(
        self,
        failure_threshold: int = 3,
        open_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> CircuitState:
        """Current state (OPEN stays OPEN until a request acquires the half-open probe)."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def available(self) -> bool:
        """Whether :meth:`acquire` would let a request through now (no state change)."""
        if self._state is CircuitState.CLOSED:  # the common case: no clock read
            return True
        now = self._clock()
        if self._state is CircuitState.OPEN:
            return now - self._opened_at >= self.open_s
        return self._probe_started is None or now - self._probe_started >= self.open_s

    def acquire(self) -> bool:
        """Admit one request: always when closed; as the single probe when half-open (or open and due)."""
        if not self.available():
            return False
        if self._state is not CircuitState.CLOSED:
            self._state = CircuitState.HALF_OPEN
            self._probe_started = self._clock()
        return True

    def record_success(self) -> None:
        """A request (or probe) succeeded: close the circuit."""
        self._failures = 0
        self._state = CircuitState.CLOSED
        self._probe_started = None

    def release(self) -> None:
        """A request ended without telling anything about the backend (a client error): a
        half-open probe slot is freed, the state stays."""
        self._probe_started = None

    def record_failure(self) -> None:
        """A request failed: open after ``failure_threshold`` in a row, or at once when half-open."""
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._trip()

    def force_open(self) -> None:
        """Eject now (e.g. the active health check saw the backend down)."""
        self._trip()

    def _trip(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._probe_started = None
