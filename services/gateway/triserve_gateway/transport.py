"""A lean HTTP/1.1 keep-alive transport for ``httpx.AsyncClient`` towards the backends.

httpx's default transport (httpcore + h11 + anyio) costs about a millisecond per request on a
small CPU — more than the gateway's whole latency budget. Backend calls are simple (one request,
one ``Content-Length`` answer, keep-alive, HTTP/1.1 on a private network), so this transport
speaks just that over asyncio streams, keeping httpx's client API, timeouts and exceptions:

- a pool of idle keep-alive connections per host, at most ``max_connections`` open;
- ``Content-Length``, chunked and read-until-close bodies;
- a request on a reused connection that the server closed meanwhile (EOF before any byte of
  the answer) is resent once on a fresh connection; other failures raise httpx's errors
  (``ConnectError``, ``ReadError``, ``RemoteProtocolError``, ``ConnectTimeout``, ``ReadTimeout``),
  which the backend clients turn into failover decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import httpx

_HEAD_LIMIT = 64 * 1024


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _StaleConnection(Exception):
    """A reused connection was closed by the server before it answered."""


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """Minimal pooled HTTP/1.1 transport (see module doc)."""

    def __init__(self, max_connections: int = 512, keepalive: int | None = None) -> None:
        self._max = max_connections
        self._keepalive = keepalive or max_connections
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"only http:// is supported, got {url.scheme}", request=request)
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode("ascii")]
        for key, value in request.headers.raw:
            head += (key, b": ", value, b"\r\n")
        head.append(b"\r\n")
        timeouts = request.extensions.get("timeout", {})
        try:
            status, headers, content = await self.exchange(
                url.host, url.port or 80, b"".join(head) + body,
                timeout=timeouts.get("read"), connect_timeout=timeouts.get("connect"),
                head_request=request.method == "HEAD",
            )
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(
            status, headers=headers, content=content, extensions={"http_version": b"HTTP/1.1"}
        )

    async def exchange(
        self,
        host: str,
        port: int,
        payload: bytes,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        head_request: bool = False,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send a complete request (head + body bytes); return (status, headers, body).

        The raw entry point the backend clients use on the hot path (no ``httpx.Request`` /
        ``httpx.Response`` objects); raises httpx's transport errors like the httpx path.
        """
        if self._closed:
            raise httpx.ConnectError("transport is closed")
        key = (host, port)
        slots = self._slots
        if slots is not None:
            if not slots.locked():
                await slots.acquire()  # immediate
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await slots.acquire()
                except TimeoutError:
                    raise httpx.PoolTimeout("no free connection in the pool") from None
        try:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.reader.at_eof() or conn.writer.is_closing():
                    conn.close()
                    continue
                try:
                    return await self._exchange(conn, key, payload, timeout, head_request, reused=True)
                except _StaleConnection:
                    continue
            conn = await self._connect(host, port, connect_timeout)
            try:
                return await self._exchange(conn, key, payload, timeout, head_request, reused=False)
            except _StaleConnection:
                raise httpx.RemoteProtocolError("server disconnected without sending a response") from None
        finally:
            if slots is not None:
                slots.release()

    async def _connect(self, host: str, port: int, timeout: float | None) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {host}:{port}: {exc}") from None
        return _Connection(reader, writer)

    async def _exchange(
        self,
        conn: _Connection,
        key: tuple[str, int],
        payload: bytes,
        timeout: float | None,
        head_request: bool,
        reused: bool,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        reader = conn.reader
        got_bytes = False
        try:
            async with asyncio.timeout(timeout):
                conn.writer.write(payload)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if reused and not exc.partial:
                        raise _StaleConnection from None
                    raise httpx.RemoteProtocolError(
                        "server disconnected without sending a complete response"
                    ) from None
                except asyncio.LimitOverrunError:
                    raise httpx.RemoteProtocolError("response head too large") from None
                got_bytes = True
                status, headers, length, chunked, close = _parse_head(head)
                if head_request or status in (204, 304) or 100 <= status < 200:
                    content = b""
                elif length is not None:
                    content = await reader.readexactly(length) if length else b""
                elif chunked:
                    content = await _read_chunked(reader)
                else:
                    content = await reader.read()
                    close = True
        except TimeoutError:
            conn.close()
            raise httpx.ReadTimeout("timed out waiting for the backend's response") from None
        except _StaleConnection:
            conn.close()
            raise
        except asyncio.IncompleteReadError:
            conn.close()
            raise httpx.RemoteProtocolError("response body truncated") from None
        except (ConnectionError, OSError) as exc:
            conn.close()
            if reused and not got_bytes:
                raise _StaleConnection from None
            raise httpx.ReadError(f"connection error: {exc}") from None
        except BaseException:
            conn.close()  # cancelled or a protocol error: the connection's state is unknown
            raise
        if close or self._closed:
            conn.close()
        else:
            idle = self._idle.setdefault(key, deque())
            if len(idle) < self._keepalive:
                idle.append(conn)
            else:
                conn.close()
        return status, headers, content

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]], int | None, bool, bool]:
    lines = head[:-4].split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    try:
        if not status_line[0].startswith(b"HTTP/1."):
            raise ValueError
        status = int(status_line[1])
    except (ValueError, IndexError):
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}") from None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    close = status_line[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        value = value.strip()
        lname = name.strip().lower()
        headers.append((lname, value))
        if lname == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise httpx.RemoteProtocolError("bad Content-Length") from None
        elif lname == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lname == b"connection":
            v = value.lower()
            close = b"close" in v or (close and b"keep-alive" not in v)
    if chunked:
        length = None
    return status, headers, length, chunked, close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError("bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
