"""Per-attempt timeouts from each backend's observed latency (HTTP-free, transport-agnostic).

A hung backend (SIGSTOP, a stuck worker) must cost a client a fraction of a second, not the
backend's fixed timeout. Like TCP's retransmission timer (RFC 6298), each backend keeps a
smoothed latency ``srtt`` and a smoothed deviation ``rttvar`` of its successful calls, and an
attempt is given::

    timeout = clamp(srtt + k * rttvar, min_s, max_s)

(``max_s`` until the first measurement). The gateway core hedges an attempt that runs 1.5x past
it on another backend (first answer wins), so a hung backend costs a client about 1.5x its
attempt timeout; the backend call itself ends at the backend's configured ``timeout_s``.

Interface for the gateway core (and any future transport or routing strategy):
:meth:`AttemptTimeouts.timeout` before a call, :meth:`AttemptTimeouts.observe` after a success.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Estimate:
    srtt: float
    rttvar: float


class AttemptTimeouts:
    """Latency estimates per backend and the attempt timeout they imply (see module doc)."""

    def __init__(
        self,
        min_s: float = 0.1,
        max_s: float = 0.4,
        k: float = 4.0,
        alpha: float = 0.125,
        beta: float = 0.25,
    ) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("attempt timeouts need 0 < min_s <= max_s")
        self.min_s = min_s
        self.max_s = max_s
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self._estimates: dict[str, _Estimate] = {}

    def observe(self, backend: str, seconds: float) -> None:
        """Fold one successful call's duration into ``backend``'s estimate."""
        est = self._estimates.get(backend)
        if est is None:
            self._estimates[backend] = _Estimate(seconds, seconds / 2)
            return
        est.rttvar += self.beta * (abs(est.srtt - seconds) - est.rttvar)
        est.srtt += self.alpha * (seconds - est.srtt)

    def reset(self, backend: str) -> None:
        """Forget ``backend``'s estimate (it came back: measure it afresh, from ``max_s``)."""
        self._estimates.pop(backend, None)

    def timeout(self, backend: str) -> float:
        """Seconds the next attempt on ``backend`` may take."""
        est = self._estimates.get(backend)
        if est is None:
            return self.max_s
        return min(self.max_s, max(self.min_s, est.srtt + self.k * est.rttvar))

    def describe(self, backend: str) -> dict[str, float | None]:
        """``srtt``/``rttvar``/``timeout`` in ms for status pages."""
        est = self._estimates.get(backend)
        return {
            "srtt_ms": None if est is None else round(est.srtt * 1e3, 3),
            "rttvar_ms": None if est is None else round(est.rttvar * 1e3, 3),
            "attempt_timeout_ms": round(self.timeout(backend) * 1e3, 3),
        }
