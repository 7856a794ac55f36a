"""The core's overload limits (HTTP-free): admission, deadline, retry budget, attempt timeouts.

Built from :class:`~triserve_gateway.settings.GatewaySettings` (``settings.limits()``); what each
one does is in ``docs/operations.md``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Per-model admission limits and per-request time limits of the gateway core."""

    max_in_flight: int = 64
    max_queue: int = 128
    retry_after_s: float = 1.0
    request_timeout_s: float = 5.0
    retry_budget_percent: float = 0.2
    retry_budget_min_per_s: float = 10.0
    attempt_timeout_min_s: float = 0.1
    attempt_timeout_max_s: float = 0.4
