"""Each backend's live state, and the active health checks that keep it current (HTTP-free).

Probes run on every backend client's own probe connections with their own timeout (never the
inference pool: load cannot starve them); a backend that fails its probe leaves rotation
(ejection cause ``health_check``) until a probe passes again. Passive ejection on consecutive
failed calls is the :class:`~triserve_gateway.circuit.CircuitBreaker`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from triserve_gateway.backends import BackendClient
from triserve_gateway.circuit import CircuitBreaker, CircuitState
from triserve_gateway.config import HealthConfig
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.periodic import Periodic
from triserve_gateway.routing import BackendStats

log = logging.getLogger(__name__)


@dataclass
class BackendState:
    """A backend's client and live state: active health, circuit breaker, routing stats."""

    name: str
    client: BackendClient
    breaker: CircuitBreaker
    stats: BackendStats
    healthy: bool = True
    """Result of the last active health check (optimistic until the first one)."""
    last_error: str | None = None
    checked_at: float | None = None

    def routable(self) -> bool:
        """Healthy and admitted by its circuit breaker."""
        return self.healthy and self.breaker.available()

    def health_label(self) -> str:
        if not self.healthy:
            return "unhealthy"
        if self.breaker.state is CircuitState.CLOSED:
            return "healthy"
        return "ejected" if self.breaker.state is CircuitState.OPEN else "probing"


class HealthChecker:
    """Periodic concurrent probes of every backend (see module doc)."""

    def __init__(
        self,
        backends: Mapping[str, BackendState],
        config: HealthConfig,
        metrics: GatewayMetrics,
        on_recovered: Callable[[str], None] | None = None,
    ) -> None:
        """``on_recovered(name)`` runs when a backend passes its probe again (e.g. forget its
        latency estimate: a restarted backend warms up)."""
        self.backends = backends
        self.on_recovered = on_recovered
        self.config = config
        self.metrics = metrics
        self._periodic = Periodic(self.check, config.interval_s, "health check round failed", log)
        self._published: dict[str, bool] = {}

    def publish_up(self, state: BackendState) -> None:
        """Export whether ``state`` is in rotation (healthy, circuit not open); written when it changes
        (every backend call reports in)."""
        up = state.healthy and state.breaker.state is not CircuitState.OPEN
        if self._published.get(state.name) is not up:
            self._published[state.name] = up
            self.metrics.backend_up.labels(state.name).set(1.0 if up else 0.0)

    async def check(self) -> None:
        """Probe every backend once, concurrently, and update their ``healthy`` flags."""
        timeout = self.config.timeout_s
        states = list(self.backends.values())
        results = await asyncio.gather(*(s.client.health(timeout) for s in states), return_exceptions=True)
        now = time.monotonic()
        for state, result in zip(states, results, strict=True):
            ok = result is True
            if ok != state.healthy:
                if ok:
                    log.info("backend %s passes its health check again", state.name)
                    if self.on_recovered is not None:
                        self.on_recovered(state.name)
                else:
                    self.metrics.ejections.labels(state.name, "health_check").inc()
                    log.warning("backend %s fails its health check", state.name)
            state.healthy = ok
            state.checked_at = now
            if not ok:
                failed = isinstance(result, BaseException)
                state.last_error = repr(result) if failed else "health check failed"
            self.publish_up(state)

    def start(self) -> None:
        """Check every ``interval_s`` from now on."""
        self._periodic.start()

    async def stop(self) -> None:
        """Stop checking."""
        await self._periodic.stop()
