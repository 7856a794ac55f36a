"""The gateway's core, HTTP-free at its edges: route, batch, call, fail over, check health.

:meth:`Gateway.infer` takes an already preprocessed float32 batch and returns the model's output:

1. candidates = the model's backends that pass the active health check and whose circuit
   breaker admits a request (a forced backend — ``X-Backend`` — is the only candidate);
2. the model's strategy picks one (backends of weight 0 only when no weighted one is left);
3. the request joins that backend's micro-batcher (or calls it directly with batching off);
4. on a retryable failure (connection error, 5xx, timeout) the next healthy backend is tried,
   and an attempt slower than 1.5x its backend's attempt timeout gets a hedge elsewhere (first
   answer wins), up to ``max_attempts`` and while the model's retry budget allows; the breaker
   records one outcome per backend call.

Every request has one :class:`~triserve_gateway.deadline.Deadline` (504); attempts and backend calls
are cut at each backend's attempt timeout (:mod:`triserve_gateway.attempts`); :meth:`Gateway.admit`
bounds each model's in-flight work and queue.

503 when no backend is routable, otherwise the last failure's status (502/503/504).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from triserve_common.errors import ModelNotFoundError, ModelNotReadyError, TriserveError
from triserve_gateway.admission import OverloadedError, metered_admission
from triserve_gateway.attempts import AttemptTimeouts
from triserve_gateway.backends import BackendClient
from triserve_gateway.batching import BatcherPool, MicroBatcher
from triserve_gateway.circuit import CircuitBreaker, CircuitState
from triserve_gateway.config import ModelRoute, RoutingConfig
from triserve_gateway.deadline import Deadline
from triserve_gateway.errors import (
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    is_retryable,
)
from triserve_gateway.failover import can_add, candidates, next_backend
from triserve_gateway.health import BackendState, HealthChecker
from triserve_gateway.limits import Limits
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.models import ModelCatalog, ModelVersion, check_input
from triserve_gateway.retry_budget import RetryBudget
from triserve_gateway.routing import BackendStats, Candidate, make_strategy
from triserve_gateway.targets import RoutedResult, RouteState, Target

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
BatchKey = tuple[str, str | None, str]
"""(model, version, backend)."""


_FAILURE_REASONS: tuple[tuple[type[TriserveError], str], ...] = (
    (BackendUnavailableError, "unavailable"),
    (BackendTimeoutError, "timeout"),
    (BackendRejectedError, "rejected"),
    (BackendError, "error"),
)


class Gateway:
    """Routing, batching, failover and health checking over a set of backend clients."""

    def __init__(
        self,
        routing: RoutingConfig,
        catalog: ModelCatalog,
        clients: Mapping[str, BackendClient],
        metrics: GatewayMetrics,
        rng: random.Random | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.routing = routing
        self.catalog = catalog
        self.metrics = metrics
        self.limits = limits = limits or Limits()
        self.attempts = AttemptTimeouts(limits.attempt_timeout_min_s, limits.attempt_timeout_max_s)
        missing = sorted(set(routing.backends) - set(clients))
        if missing:
            raise ValueError(f"no client for backend(s) {', '.join(missing)}")
        self.backends: dict[str, BackendState] = {
            name: BackendState(
                name=name,
                client=clients[name],
                breaker=CircuitBreaker(routing.circuit.failure_threshold, routing.circuit.open_s),
                stats=BackendStats(name),
            )
            for name in routing.backends
        }
        self._rng = rng or random.Random()
        self._routes: dict[str, RouteState] = {}
        for model, route in routing.models.items():
            self.add_route(model, route)
        self.placement: dict[tuple[str, str], frozenset[str]] = {}
        """(model, version) → backends holding it, when known (else every backend of the route)."""
        self._batchers: BatcherPool[BatchKey] = BatcherPool(self._make_batcher)
        self.health = HealthChecker(self.backends, routing.health, metrics, self.attempts.reset)
        for state in self.backends.values():
            self._publish_up(state)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, health_checks: bool = True) -> None:
        """First health check (so routing starts informed), then the periodic check task."""
        if health_checks:
            await self.health.check()
            self.health.start()

    async def close(self) -> None:
        """Stop health checks, drain batchers, close backend clients."""
        await self.health.stop()
        await self._batchers.close()
        await asyncio.gather(*(s.client.aclose() for s in self.backends.values()), return_exceptions=True)

    # ------------------------------------------------------------------ queries

    def _route(self, model: str) -> RouteState:
        r = self._routes.get(model)
        if r is None:
            known = ", ".join(sorted(self._routes))
            raise ModelNotFoundError(f"model '{model}' is not routed (models: {known})")
        return r

    def route(self, model: str) -> ModelRoute:
        """The routing config of ``model`` (404 if it is not routed)."""
        return self._route(model).config

    def resolve(self, model: str, version: str | None = None) -> Target:
        """Route and model version of a request (404 naming what is not served); no version = the
        model's default version, asked of the backends by name."""
        route = self._route(model)
        mv = self.catalog.get(model, version)
        return Target(model, mv.version, mv, route, self.placement.get((model, mv.version)))

    def add_route(self, model: str, route: ModelRoute) -> None:
        """Route ``model`` (a model registered at run time) as ``route`` says."""
        cands = [Candidate(self.backends[ref.name].stats, ref.weight) for ref in route.backends]
        self._routes[model] = RouteState(
            route, make_strategy(route.strategy, self._rng), cands, {c.name: c for c in cands},
            metered_admission(model, self.limits, self.metrics),
            RetryBudget(self.limits.retry_budget_percent, self.limits.retry_budget_min_per_s),
        )

    def remove_route(self, model: str) -> None:
        """Stop routing ``model`` (its last version was unregistered)."""
        self._routes.pop(model, None)

    async def forget(self, model: str, version: str) -> None:
        """Drop the batchers and placement of an unregistered version."""
        self.placement.pop((model, version), None)
        await self._batchers.drop(lambda key: key[0] == model and key[1] == version)

    def routed(self) -> list[str]:
        """The routed models."""
        return sorted(self._routes)

    def is_routed(self, model: str) -> bool:
        """Whether ``model`` is routed (registered)."""
        return model in self._routes

    def model_ready(self, model: str) -> bool:
        """Whether at least one backend holding ``model``'s default version is routable."""
        r = self._routes.get(model)
        default = self.catalog.default_version(model)
        if r is None or default is None:
            return False
        placed = self.placement.get((model, default))
        return any(
            self.backends[c.name].routable() for c in r.candidates if placed is None or c.name in placed
        )

    def ready(self) -> bool:
        """Every registered model has a routable backend (true with none registered, as TorchServe)."""
        return all(self.model_ready(m) for m in self._routes if self.catalog.default_version(m) is not None)

    # ------------------------------------------------------------------ inference

    def overloaded(self, model: str) -> OverloadedError | None:
        """The 503 a request for ``model`` would get from admission right now, if any (counted):
        lets the HTTP layer shed load before reading or parsing the request."""
        r = self._routes.get(model)
        if r is None or r.admission is None or not r.admission.full():
            return None
        return r.admission.refuse()

    @asynccontextmanager
    async def admit(self, model: str, deadline: Deadline) -> AsyncIterator[None]:
        """Hold one of ``model``'s in-flight slots (:class:`~triserve_gateway.admission.Admission`)."""
        gate = self._route(model).admission
        assert gate is not None
        try:
            await gate.acquire(deadline)
        except asyncio.CancelledError:
            self.metrics.cancelled.labels(model, "admission_queue").inc()
            raise
        try:
            yield
        finally:
            gate.release()

    async def infer(
        self, target: Target, x: Array, request_id: str | None = None, backend: str | None = None,
        deadline: Deadline | None = None,
    ) -> RoutedResult:
        """Run ``x`` (float32 ``[N, ...]`` matching the model input) on a backend; see module doc.

        An attempt that fails (retryable) is retried on another backend at once; one that is still
        running after 1.5x its backend's attempt timeout gets a *hedge* on another backend, and
        the first answer wins (Finagle's backup requests): a hung backend costs ~1.5x its attempt
        timeout, while a machine that is merely slow loses nothing. Retries and hedges spend the
        model's retry budget; everything ends at ``deadline`` (504)."""
        check_input(target.mv, x)
        deadline = deadline or Deadline(self.limits.request_timeout_s)
        pool, attempts = candidates(target, backend)
        budget = target.route.budget
        budget.deposit()
        tried: list[str] = []
        running: dict[asyncio.Future[tuple[Array, float, float]], str] = {}
        last_exc: TriserveError | None = None
        start_next = True
        try:
            while True:
                state = None
                if start_next:
                    retry = bool(tried)
                    state = next_backend(self.backends, self.metrics, target, pool, tried, attempts, retry)
                if state is not None:
                    running[asyncio.ensure_future(self._attempt(target, state, x, request_id))] = state.name
                if not running:
                    break
                wait_s = deadline.remaining()
                if can_add(self.backends, pool, tried, attempts, budget):
                    newest = next(reversed(running.values()))
                    wait_s = min(wait_s, 1.5 * self.attempts.timeout(newest))
                done, _ = await asyncio.wait(running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if not done and deadline.expired():
                    self.metrics.deadline_expired.labels(target.model, "backend").inc()
                    raise deadline.exceeded(f"waiting for backend(s) {', '.join(running.values())}")
                start_next = True  # a hedge when nothing is done yet, a retry after a failure
                for fut in done:
                    name = running.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        value, queue_s, backend_s = fut.result()
                        return RoutedResult(value, name, target.mv.version, queue_s, backend_s, len(tried))
                    if not isinstance(exc, TriserveError) or not is_retryable(exc):
                        raise exc
                    last_exc = exc
                    log.warning("request %s: backend %s failed: %s", request_id, name, exc.message)
        finally:
            for fut in running:
                fut.cancel()  # the losers: queued ones leave their queue, sent ones are dropped
        if last_exc is not None:
            if len(tried) == 1:
                raise last_exc
            message = f"{last_exc.message} (tried backends: {', '.join(tried)})"
            raise type(last_exc)(message, status_code=last_exc.status_code) from last_exc
        states = ", ".join(f"{c.name}: {self.backends[c.name].health_label()}" for c in pool)
        error = ModelNotReadyError(
            f"no healthy backend for model '{target.model}' version {target.version} "
            f"({states or 'no backend holds it'})"
        )
        error.headers = {"Retry-After": str(max(1, math.ceil(self.limits.retry_after_s)))}
        raise error

    async def _attempt(
        self, target: Target, state: BackendState, x: Array, request_id: str | None
    ) -> tuple[Array, float, float]:
        """One try, batched or direct: (output, queue s, backend s). Cancelled, it leaves its batch
        queue, or, once sent, lets the call complete and drops its answer."""
        state.stats.outstanding += 1
        try:
            if target.route.config.batching.enabled:
                key = (target.model, target.version, state.name)
                outcome = await self._batchers.get(key).submit(x, request_id)
                return outcome.value, outcome.queue_s, outcome.run_s
            start = time.perf_counter()
            call = asyncio.ensure_future(self._call(state, target.mv, target.version, x, [request_id]))
            call.add_done_callback(_retrieve)
            try:
                value = await asyncio.shield(call)
            except asyncio.CancelledError:
                self.metrics.cancelled.labels(target.model, "sent").inc()
                raise
            return value, 0.0, time.perf_counter() - start
        finally:
            state.stats.outstanding -= 1

    def _make_batcher(self, key: BatchKey) -> MicroBatcher:
        model, version, backend = key
        state = self.backends[backend]
        cfg = self._routes[model].config.batching
        mv = self.catalog.get(model, version)
        histogram = self.metrics.batch_size.labels(model, backend)

        async def run(x: Array, tags: list[Any]) -> Array:
            return await self._call(state, mv, version, x, tags)

        return MicroBatcher(
            run,
            max_batch_size=cfg.max_batch_size,
            max_queue_delay_s=cfg.max_queue_delay_ms / 1000.0,
            max_concurrent_batches=cfg.max_concurrent_batches,
            isolate=lambda exc: isinstance(exc, BackendRejectedError),
            on_batch=histogram.observe,
            on_cancel=lambda stage: self.metrics.cancelled.labels(model, stage).inc(),
        )

    async def _call(
        self, state: BackendState, mv: ModelVersion, version: str | None, x: Array, tags: list[Any]
    ) -> Array:
        """One backend call (one batch), cut after the backend's ``timeout_s`` (routing file):
        breaker bookkeeping, latency stats, failure metrics."""
        ids = [t for t in tags if t]
        request_id = ",".join(ids) if ids else None
        timeout = self.routing.backends[state.name].timeout_s
        start = time.perf_counter()
        try:
            try:
                async with asyncio.timeout(timeout):
                    y = await state.client.infer(
                        mv.name, version, x, request_id, mv.input.name, mv.output.name
                    )
            except TimeoutError:
                raise BackendTimeoutError(
                    f"backend '{state.name}' did not answer within {timeout * 1e3:.0f} ms"
                ) from None
            if y.ndim != 2 or y.shape[0] != x.shape[0] or (mv.labels and y.shape[1] != len(mv.labels)):
                raise BackendError(
                    f"backend '{state.name}' returned shape {list(y.shape)} for {x.shape[0]} rows "
                    f"({len(mv.labels)} classes expected)"
                )
        except TriserveError as exc:
            self._record_failure(state, exc)
            raise
        except Exception as exc:  # a bug or an unexpected client error: count it, fail over
            err = BackendError(f"backend '{state.name}' failed: {type(exc).__name__}: {exc}")
            self._record_failure(state, err)
            raise err from exc
        elapsed = time.perf_counter() - start
        state.breaker.record_success()
        state.stats.observe_latency(elapsed)
        self.attempts.observe(state.name, elapsed)
        self.metrics.backend_calls.labels(state.name).inc()
        self.metrics.attempt_timeout.labels(state.name).set(self.attempts.timeout(state.name))
        self._publish_up(state)
        return y.astype(np.float32, copy=False)

    def _record_failure(self, state: BackendState, exc: TriserveError) -> None:
        reason = next((r for cls, r in _FAILURE_REASONS if isinstance(exc, cls)), "error")
        self.metrics.backend_failures.labels(state.name, reason).inc()
        if isinstance(exc, BackendRejectedError):
            state.breaker.record_success()  # the backend is alive; the request was at fault
            return
        state.last_error = exc.message
        before = state.breaker.state
        state.breaker.record_failure()
        if before is not CircuitState.OPEN and state.breaker.state is CircuitState.OPEN:
            self.metrics.ejections.labels(state.name, reason).inc()
            log.warning("backend %s ejected after %d consecutive failures: %s",
                        state.name, state.breaker.consecutive_failures, exc.message)
        self._publish_up(state)

    # ------------------------------------------------------------------ health

    def _publish_up(self, state: BackendState) -> None:
        self.health.publish_up(state)

    async def check_health(self) -> None:
        """Probe every backend once, concurrently (see :class:`HealthChecker`)."""
        await self.health.check()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # seen: its caller may have left


__all__ = ["BackendState", "Gateway", "RouteState", "RoutedResult", "Target"]
