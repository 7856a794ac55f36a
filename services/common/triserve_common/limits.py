"""Connection limit and read timeouts of a listener, as uvicorn options (no hand-written HTTP).

uvicorn has a connection/task limit (``limit_concurrency``: 503 above it) and an idle keep-alive
timeout, but no limit on how long a client may take to send a request. Here:

- :func:`header_timeout_protocol`: uvicorn's own httptools protocol class, with a timer from the
  first byte of a request (or the connection's start) to its complete headers; a client that is
  slower (slow-loris) has its connection closed. Parsing stays httptools'.
- the same protocol hands each request/response cycle a :class:`CoalescingTransport`: uvicorn
  writes a response's status line and headers, then its body, in two ``write`` calls (two
  syscalls, two TCP segments); the header block is held until the body's first bytes (or the
  loop's next turn) and both go out in one write.
- :class:`BodyTimeoutMiddleware` (pure ASGI): the body must arrive within ``body_timeout_s`` of
  the headers, else 408 with ``Connection: close``.

:func:`uvicorn_options` gives the keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` of
whatever listener serves inference.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from triserve_common.errors import RequestTimeoutError


@dataclass(frozen=True)
class ServerLimits:
    """What a listener tolerates from its clients."""

    max_connections: int = 2048
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_timeout_s: int = 75


class CoalescingTransport:
    """The transport as one uvicorn request/response cycle sees it: the cycle's first write (the
    response's status line and headers, or ``100 Continue``) is held and sent with the next one
    (the body) in a single ``write``; a write nothing follows goes out on the loop's next turn
    (``call_soon``), and ``close`` sends what is held first. Bytes and their order are unchanged."""

    __slots__ = ("_held", "_loop", "_transport", "_used")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._used = False

    def write(self, data: bytes) -> None:
        """Send ``data`` (the cycle's first write: held until the next write or the next turn)."""
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._used:
            self._used = True
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send what is held, if anything."""
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def is_closing(self) -> bool:
        """Whether the connection is closing."""
        return self._transport.is_closing()

    def close(self) -> None:
        """Send what is held, then close the connection."""
        self.flush()
        self._transport.close()


class _HeaderTimeoutProtocol(HttpToolsProtocol):
    """httptools protocol whose clients must complete each request's headers in time, and whose
    responses go out in one write (:class:`CoalescingTransport`)."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new cycle (not an upgrade)
            cycle.transport = cast(asyncio.Transport, CoalescingTransport(self.transport, self.loop))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def header_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class closing connections whose headers take over ``seconds``."""
    return type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout_s": seconds})


class BodyTimeoutMiddleware:
    """408 when a request's body is not complete ``timeout_s`` after its headers (pure ASGI)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # the body is in: later receives wait for a disconnect, unbounded
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                error = RequestTimeoutError(f"request body not received within {self.timeout_s:g} s")
                error.headers = {"Connection": "close"}
                raise error from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """``uvicorn.run``/``uvicorn.Config`` keyword arguments enforcing ``limits`` (httptools)."""
    return {
        "http": header_timeout_protocol(limits.header_timeout_s),
        "limit_concurrency": limits.max_connections,
        "timeout_keep_alive": limits.keep_alive_timeout_s,
    }
