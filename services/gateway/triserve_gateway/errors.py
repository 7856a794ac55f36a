"""Gateway errors: backend failures classified as retryable (failover) or final.

All extend :mod:`triserve_common.errors`, so ``install_error_handlers`` renders them as
``{"error": msg}`` with their HTTP status.
"""

from __future__ import annotations

from triserve_common.errors import (
    BackendError,
    BackendTimeoutError,
    BadRequestError,
    ModelNotReadyError,
    TriserveError,
)


class BackendUnavailableError(ModelNotReadyError):
    """A backend could not be reached (connection refused/reset) or answered 503/429 (503)."""


class BackendLacksVersionError(BackendUnavailableError):
    """A backend answered 404 for the model version: it does not hold it (503). Retried elsewhere,
    the version is taken off that backend until it reports holding it again; never a circuit-breaker
    failure (the backend is alive)."""


class BackendRejectedError(TriserveError):
    """A backend refused the request as a client error (its 4xx status is kept); not retried."""


class UnknownBackendError(BadRequestError):
    """A backend forced by header/query is not configured for the model (400)."""


RETRYABLE: tuple[type[TriserveError], ...] = (BackendUnavailableError, BackendTimeoutError, BackendError)
"""Errors after which the request is retried on another healthy backend."""


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend failure worth retrying elsewhere (connection, 5xx, timeout)."""
    return isinstance(exc, RETRYABLE)


__all__ = [
    "RETRYABLE",
    "BackendError",
    "BackendLacksVersionError",
    "BackendRejectedError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "UnknownBackendError",
    "is_retryable",
]
