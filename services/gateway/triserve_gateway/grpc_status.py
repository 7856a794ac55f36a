"""gRPC status codes of the gateway's errors: each :class:`TriserveError` carries an HTTP status,
mapped here as Google's API design guide pairs them (``google.rpc.Code`` ↔ HTTP).

=================================  ==========================================================
HTTP status of the error           gRPC status code
=================================  ==========================================================
400, 415, 422                      ``INVALID_ARGUMENT`` (malformed request, wrong shape or
                                   datatype, undecodable image)
401                                ``UNAUTHENTICATED`` (missing or wrong inference key)
403                                ``PERMISSION_DENIED``
404                                ``NOT_FOUND`` (unknown model or version)
408, 504                           ``DEADLINE_EXCEEDED`` (the request's deadline passed)
409                                ``ABORTED``
413, 429                           ``RESOURCE_EXHAUSTED`` (over a size or count limit, like a
                                   message over ``grpc.max_receive_message_length``)
499                                ``CANCELLED`` (the client went away)
501                                ``UNIMPLEMENTED``
502, 503                           ``UNAVAILABLE`` (overloaded, or no backend could answer:
                                   retry later, after ``retry-after`` when given)
other 4xx                          ``FAILED_PRECONDITION``
other 5xx                          ``INTERNAL``
=================================  ==========================================================

A client's mistake is never ``INTERNAL``.
"""

from __future__ import annotations

import grpc

_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of an error with ``http_status`` (module doc)."""
    code = _CODES.get(http_status)
    if code is not None:
        return code
    if 400 <= http_status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL
