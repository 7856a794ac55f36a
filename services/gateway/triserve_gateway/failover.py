"""Which backend a request tries next (HTTP-free): the request's candidates, the next one to
try (the route's strategy — p2c by default — picks among the routable untried ones; breaker
acquired, retry budget spent for a retry or hedge), and whether another attempt may start at all.
Used by :mod:`triserve_gateway.hedging`."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from triserve_common.errors import ModelNotReadyError
from triserve_gateway.errors import UnknownBackendError
from triserve_gateway.health import BackendState
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.models import clip
from triserve_gateway.retry_budget import RetryBudget
from triserve_gateway.routing import Candidate
from triserve_gateway.targets import Absence, Target

log = logging.getLogger(__name__)


def can_add(
    backends: Mapping[str, BackendState], pool: list[Candidate], tried: list[str], attempts: int,
    budget: RetryBudget,
) -> bool:
    """Whether another attempt could start: one left, a routable backend untried, budget left."""
    return len(tried) < attempts and len(pool) > len(tried) and any(
        c.name not in tried and backends[c.name].routable() for c in pool
    ) and budget.balance() >= 1.0


def next_backend(
    backends: Mapping[str, BackendState], metrics: GatewayMetrics, target: Target, pool: list[Candidate],
    tried: list[str], attempts: int, retry: bool,
) -> BackendState | None:
    """The next backend to try, its breaker acquired (a retry also takes a budget token);
    None when no backend is left or the retry budget is spent."""
    while len(tried) < attempts:
        avail = [c for c in pool if c.name not in tried and backends[c.name].routable()]
        if not avail:
            return None
        if retry and target.route.budget.balance() < 1.0:
            metrics.retry_budget_exhausted.labels(target.model).inc()
            log.warning("retry budget of model %s spent, not retrying", target.model)
            return None
        weighted = avail if all(c.weight > 0 for c in avail) else [c for c in avail if c.weight > 0]
        cand = target.route.strategy.choose(weighted or avail)
        state = backends[cand.name]
        if not state.breaker.acquire():
            tried.append(cand.name)
            continue
        if retry and target.route.budget.try_withdraw():
            metrics.retries.labels(target.model).inc()
            metrics.failovers.labels(target.model, target.mv.version, tried[-1]).inc()
        tried.append(cand.name)
        return state
    return None


def candidates(
    target: Target, backend: str | None, absent: Mapping[tuple[str, str], Mapping[str, Absence]]
) -> tuple[list[Candidate], int]:
    """Candidates and attempts of a request: the forced backend once, else the route's backends
    holding the version. A forced backend that lacks the version is refused naming why (``absent``):
    400 when it can never serve it, 503 while it does not hold it."""
    r = target.route
    placed = target.placed
    if not backend:
        pool = [c for c in r.candidates if placed is None or c.name in placed]
        return pool, r.config.max_attempts or len(pool)
    cand = r.by_name.get(backend)
    if cand is None or (placed is not None and backend not in placed):
        choices = ", ".join(n for n in r.by_name if placed is None or n in placed) or "none"
        what = f"model '{target.model}' version {target.version}"
        absence = absent.get((target.model, target.mv.version), {}).get(backend)
        if cand is None or absence is None or absence.permanent:
            why = f": {absence.reason}" if absence is not None else ""
            raise UnknownBackendError(
                f"backend '{clip(backend)}' does not serve {what}{why} (choose from: {choices})"
            )
        raise ModelNotReadyError(
            f"backend '{backend}' does not hold {what} now: {absence.reason} (choose from: {choices})"
        )
    return [cand], 1
