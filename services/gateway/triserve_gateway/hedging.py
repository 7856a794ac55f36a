"""The attempts of one request across backends (HTTP-free): retries and backup requests.

:func:`run_attempts` starts the first attempt on the backend :func:`~triserve_gateway.failover.next_backend`
picks. An attempt that fails retryably (connection error, timeout, 5xx; a 404 = the backend lacks
the version) is retried on another backend at once; one still running after 1.5x its backend's
attempt timeout (:class:`~triserve_gateway.attempts.AttemptTimeouts`) gets a *hedge* on another
backend, and the first answer wins (Finagle's backup requests): a hung backend costs ~1.5x its
attempt timeout, while a machine that is merely slow everywhere loses nothing. Retries and hedges
spend the model's retry budget, at most ``max_attempts`` backends are tried, and everything ends at
the request's :class:`~triserve_gateway.deadline.Deadline` (504). The losers are cancelled: a
queued one leaves its batch queue, a sent one completes and its answer is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

from triserve_common.errors import ModelNotReadyError, TriserveError
from triserve_gateway.attempts import AttemptTimeouts
from triserve_gateway.batching import BatchOutcome
from triserve_gateway.deadline import Deadline
from triserve_gateway.errors import tries_elsewhere
from triserve_gateway.failover import can_add, next_backend
from triserve_gateway.health import BackendState
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.routing import Candidate
from triserve_gateway.targets import RoutedResult, Target

log = logging.getLogger(__name__)

T = TypeVar("T")
AttemptFn = Callable[[BackendState], asyncio.Future[BatchOutcome]]
"""Starts one attempt of the request on a backend (its breaker already acquired)."""
HEDGE_FACTOR = 1.5
"""An attempt running this many times its backend's attempt timeout gets a hedge."""


async def first_done(futures: Collection[asyncio.Future[T]], timeout: float) -> list[asyncio.Future[T]]:
    """The futures done once one of them is, or after ``timeout`` seconds (maybe none). What
    ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` does, without its per-call sets and checks
    (every request waits here). The futures are left running."""
    done = [f for f in futures if f.done()]
    if done:
        return done
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for f in futures:
        f.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        for f in futures:
            f.remove_done_callback(wake)
    return [f for f in futures if f.done()]


class AttemptRunner:
    """Runs a request's attempts over the gateway's backends (see module doc)."""

    def __init__(
        self, backends: Mapping[str, BackendState], metrics: GatewayMetrics, timeouts: AttemptTimeouts,
        retry_after_s: float,
    ) -> None:
        self.backends = backends
        self.metrics = metrics
        self.timeouts = timeouts
        self.retry_after = str(max(1, math.ceil(retry_after_s)))
        """``Retry-After`` of the 503 when no backend can serve the model."""

    async def run(
        self, target: Target, pool: list[Candidate], max_attempts: int, deadline: Deadline,
        attempt: AttemptFn, request_id: str | None,
    ) -> RoutedResult:
        """The first answer of an attempt on one of ``pool``'s backends (see module doc)."""
        budget = target.route.budget
        budget.deposit()
        tried: list[str] = []
        running: dict[asyncio.Future[BatchOutcome], str] = {}
        last_exc: TriserveError | None = None
        start_next = True
        try:
            while True:
                state = None
                if start_next:
                    state = next_backend(
                        self.backends, self.metrics, target, pool, tried, max_attempts, retry=bool(tried)
                    )
                if state is not None:
                    running[attempt(state)] = state.name
                if not running:
                    break
                wait_s = deadline.remaining()
                if can_add(self.backends, pool, tried, max_attempts, budget):
                    newest = next(reversed(running.values()))
                    wait_s = min(wait_s, HEDGE_FACTOR * self.timeouts.timeout(newest))
                done = await first_done(running, wait_s)
                if not done and deadline.expired():
                    self.metrics.deadline_expired.labels(target.model, "backend").inc()
                    raise deadline.exceeded(f"waiting for backend(s) {', '.join(running.values())}")
                start_next = True  # a hedge when nothing is done yet, a retry after a failure
                for fut in done:
                    name = running.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        o = fut.result()
                        return RoutedResult(o.value, name, target.mv.version, o.queue_s, o.run_s, len(tried))
                    if not isinstance(exc, TriserveError) or not tries_elsewhere(exc):
                        raise exc
                    last_exc = exc
                    log.warning("request %s: backend %s failed: %s", request_id, name, exc.message)
        finally:
            for fut in running:
                fut.cancel()  # the losers: queued ones leave their queue, sent ones are dropped
        raise self._failure(target, pool, tried, last_exc)

    def _failure(
        self, target: Target, pool: list[Candidate], tried: list[str], last_exc: TriserveError | None
    ) -> TriserveError:
        """The error of a request no attempt answered: the last failure (naming the backends tried),
        else 503 + ``Retry-After`` when no backend was routable."""
        if last_exc is not None:
            if len(tried) == 1:
                return last_exc
            message = f"{last_exc.message} (tried backends: {', '.join(tried)})"
            error = type(last_exc)(message, status_code=last_exc.status_code)
            error.__cause__ = last_exc
            return error
        states = ", ".join(f"{c.name}: {self.backends[c.name].health_label()}" for c in pool)
        not_ready = ModelNotReadyError(
            f"no healthy backend for model '{target.model}' version {target.version} "
            f"({states or 'no backend holds it'})"
        )
        not_ready.headers = {"Retry-After": self.retry_after}
        return not_ready
