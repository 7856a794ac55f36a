"""The lean HTTP/1.1 transport against tiny in-process asyncio servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.support.procs import free_port
from triserve_gateway.transport import FastHTTPTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def echo_keepalive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        req = await read_request(reader)
        body = req.split(b"\r\n\r\n", 1)[1]
        head = b"HTTP/1.1 200 OK\r\nX-Len: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body))
        writer.write(head + body)
        await writer.drain()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=FastHTTPTransport(8), timeout=2.0) as c:
        yield c


async def test_keepalive_connection_is_reused(client: httpx.AsyncClient) -> None:
    async with Server(echo_keepalive) as srv:
        url = f"http://127.0.0.1:{srv.port}/echo"
        for i in range(5):
            r = await client.post(url, content=b"x" * i)
            assert r.status_code == 200 and r.content == b"x" * i and r.headers["x-len"] == str(i)
        assert srv.connections == 1
        # concurrent requests open more connections (bounded by the pool)
        rs = await asyncio.gather(*(client.post(url, content=b"abc") for _ in range(20)))
        assert all(r.content == b"abc" for r in rs)
        assert srv.connections <= 8


async def test_chunked_and_close_delimited_bodies(client: httpx.AsyncClient) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
        await read_request(reader)
        writer.write(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nno such thing")
        await writer.drain()

    async with Server(chunked) as srv:
        url = f"http://127.0.0.1:{srv.port}/"
        r = await client.get(url)
        assert r.content == b"abcde"
        r = await client.get(url)
        assert r.status_code == 404 and r.content == b"no such thing"


async def test_server_closing_idle_connection_is_retried_transparently(client: httpx.AsyncClient) -> None:
    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # then close without saying so: the client's pooled connection goes stale

    async with Server(one_per_connection) as srv:
        url = f"http://127.0.0.1:{srv.port}/"
        for _ in range(3):
            assert (await client.get(url)).content == b"ok"
            await asyncio.sleep(0.01)
        assert srv.connections == 3


async def test_refused_truncated_and_slow_raise_httpx_errors(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{free_port()}/")

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()

    async with Server(truncated) as srv:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{srv.port}/")

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with Server(slow) as srv:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"http://127.0.0.1:{srv.port}/", timeout=0.2)


async def test_raw_exchange_hot_path() -> None:
    transport = FastHTTPTransport(4)
    async with Server(echo_keepalive) as srv:
        payload = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        status, headers, body = await transport.exchange("127.0.0.1", srv.port, payload, timeout=1.0)
        assert status == 200 and body == b"abc" and (b"x-len", b"3") in headers
    await transport.aclose()
