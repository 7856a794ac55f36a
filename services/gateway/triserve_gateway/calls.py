"""One backend call (one batch) and its bookkeeping (HTTP-free): the circuit breaker's outcome, the
backend's observed latency (:class:`~triserve_gateway.attempts.AttemptTimeouts`), failure and
ejection metrics, and a stale placement dropped when a backend answers that it lacks the version.

A call ends at the backend's ``timeout_s`` (routing file; the client's own timeout). A backend's
4xx is the client's mistake: it neither opens nor closes the breaker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from triserve_common.errors import TriserveError
from triserve_gateway.attempts import AttemptTimeouts
from triserve_gateway.batching import BatchOutcome
from triserve_gateway.circuit import CircuitState
from triserve_gateway.errors import (
    BackendError,
    BackendNotServingError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
)
from triserve_gateway.health import BackendState
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.models import ModelVersion

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]

_FAILURE_REASONS: tuple[tuple[type[TriserveError], str], ...] = (
    (BackendUnavailableError, "unavailable"),
    (BackendTimeoutError, "timeout"),
    (BackendNotServingError, "not_serving"),
    (BackendRejectedError, "rejected"),
    (BackendError, "error"),
)


class BackendCaller:
    """Calls backends for the gateway and keeps their live state current (see module doc)."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        timeouts: AttemptTimeouts,
        publish_up: Callable[[BackendState], None],
        unplace: Callable[[str, str, str, str], None],
    ) -> None:
        """``unplace(model, version, backend, reason)`` stops routing a version to a backend that
        answered it does not hold it."""
        self.metrics = metrics
        self.timeouts = timeouts
        self.publish_up = publish_up
        self.unplace = unplace

    def start(
        self, state: BackendState, mv: ModelVersion, version: str | None, x: Array, request_id: str | None
    ) -> asyncio.Future[BatchOutcome]:
        """:meth:`call` for one request (batching off) in its own task; the caller gets a shield of
        it: cancelled (client gone, a hedge won), the call completes and its answer is dropped."""
        call = asyncio.ensure_future(self._timed(state, mv, version, x, request_id))
        call.add_done_callback(_retrieve)
        outer = asyncio.shield(call)
        outer.add_done_callback(partial(self._left, mv.name))
        return outer

    async def _timed(
        self, state: BackendState, mv: ModelVersion, version: str | None, x: Array, request_id: str | None
    ) -> BatchOutcome:
        start = time.perf_counter()
        y = await self.call(state, mv, version, x, [request_id])
        return BatchOutcome(y, 0.0, time.perf_counter() - start, x.shape[0])

    def _left(self, model: str, outer: asyncio.Future[BatchOutcome]) -> None:
        if outer.cancelled():
            self.metrics.cancelled.labels(model, "sent").inc()

    async def call(
        self, state: BackendState, mv: ModelVersion, version: str | None, x: Array, tags: list[Any]
    ) -> Array:
        """One backend call (one batch): breaker bookkeeping, latency, failure metrics."""
        ids = [t for t in tags if t]
        request_id = ",".join(ids) if ids else None
        start = time.perf_counter()
        try:
            y = await state.client.infer(mv.name, version, x, request_id, mv.input.name, mv.output.name)
            if y.ndim != 2 or y.shape[0] != x.shape[0] or (mv.labels and y.shape[1] != len(mv.labels)):
                raise BackendError(
                    f"backend '{state.name}' returned shape {list(y.shape)} for {x.shape[0]} rows "
                    f"({len(mv.labels)} classes expected)"
                )
        except BackendNotServingError as exc:  # it lacks the version: placement was stale, not its failure
            self.record_failure(state, exc)
            self.unplace(mv.name, mv.version, state.name, exc.message)
            raise
        except TriserveError as exc:
            self.record_failure(state, exc)
            raise
        except Exception as exc:  # a bug or an unexpected client error: count it, fail over
            err = BackendError(f"backend '{state.name}' failed: {type(exc).__name__}: {exc}")
            self.record_failure(state, err)
            raise err from exc
        elapsed = time.perf_counter() - start
        state.breaker.record_success()
        self.timeouts.observe(state.name, elapsed)
        self.metrics.backend_calls.labels(state.name).inc()
        self.metrics.attempt_timeout.labels(state.name).set(self.timeouts.timeout(state.name))
        self.publish_up(state)
        return y.astype(np.float32, copy=False)

    def record_failure(self, state: BackendState, exc: TriserveError) -> None:
        """Count a failed call: metrics, breaker (an ejection when it opens), last error."""
        reason = next((r for cls, r in _FAILURE_REASONS if isinstance(exc, cls)), "error")
        self.metrics.backend_failures.labels(state.name, reason).inc()
        if isinstance(exc, BackendRejectedError):
            state.breaker.release()  # the request was at fault: neither opens nor closes the breaker
            return
        state.last_error = exc.message
        before = state.breaker.state
        state.breaker.record_failure()
        if before is not CircuitState.OPEN and state.breaker.state is CircuitState.OPEN:
            self.metrics.ejections.labels(state.name, reason).inc()
            log.warning("backend %s ejected after %d consecutive failures: %s",
                        state.name, state.breaker.consecutive_failures, exc.message)
        self.publish_up(state)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # seen: its caller may have left
