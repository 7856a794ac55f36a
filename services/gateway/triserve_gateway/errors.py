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


class BackendRejectedError(TriserveError):
    """A backend refused the request as a client error (its 4xx status is kept).

    A client's mistake, not the backend's: it neither opens nor closes the backend's breaker.
    """


class BackendNotServingError(BackendRejectedError):
    """A backend answered 404: it does not serve this model version. Tried elsewhere, not counted."""


class UnknownBackendError(BadRequestError):
    """A backend forced by header/query is not configured for the model (400)."""


RETRYABLE: tuple[type[TriserveError], ...] = (BackendUnavailableError, BackendTimeoutError, BackendError)
"""Errors after which the request is retried on another healthy backend."""


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend failure worth retrying elsewhere (connection, 5xx, timeout)."""
    return isinstance(exc, RETRYABLE)


def tries_elsewhere(exc: BaseException) -> bool:
    """Whether the request moves on to the next backend: a failure, or a backend not serving it."""
    return isinstance(exc, (*RETRYABLE, BackendNotServingError))


__all__ = [
    "RETRYABLE",
    "BackendError",
    "BackendNotServingError",
    "BackendRejectedError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "UnknownBackendError",
    "is_retryable",
    "tries_elsewhere",
]
