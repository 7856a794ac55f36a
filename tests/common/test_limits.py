"""Read timeouts of a listener, over real sockets to a real uvicorn server (triserve_common.limits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from tests.support.procs import free_port
from triserve_common.errors import install_error_handlers
from triserve_common.limits import BodyTimeoutMiddleware, CoalescingTransport, ServerLimits, uvicorn_options
from triserve_common.server import read_body


@pytest.fixture
async def server() -> AsyncIterator[int]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=0.3)

    @app.put("/echo")
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await read_body(request, 1 << 20))))

    @app.api_route("/text", methods=["GET", "HEAD"])
    async def text() -> PlainTextResponse:
        return PlainTextResponse("hello")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"one,"
            await asyncio.sleep(0.05)
            yield b"two"

        return StreamingResponse(chunks(), media_type="text/plain")

    port = free_port()
    limits = ServerLimits(max_connections=50, header_timeout_s=0.3, body_timeout_s=0.3)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", log_level="warning",
                            lifespan="off", **uvicorn_options(limits))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await task


async def test_slow_headers_get_the_connection_closed(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
    data = await asyncio.wait_for(reader.read(), 10)
    assert data == b""  # closed by the server, nothing answered
    writer.close()


async def test_silent_connection_is_closed_too(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_slow_body_gets_408_and_close(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    data = await asyncio.wait_for(reader.read(), 10)
    head = data.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 408") and b"connection: close" in head
    assert b"request body not received" in data
    writer.close()


async def test_prompt_clients_are_served_on_a_kept_alive_connection(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    for _ in range(2):
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(1) == b"3"
    writer.close()


async def _response(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 10)  # Connection: close in every request here
    writer.close()
    return data


async def test_head_streaming_and_100_continue_answers_are_whole(server: int) -> None:
    """The coalescing transport holds the header block: a HEAD (no body write), a streamed body and
    an interim ``100 Continue`` still go out complete and in order."""
    head = await _response(server, b"HEAD /text HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 5" in head.lower()
    assert head.endswith(b"\r\n\r\n")
    streamed = await _response(server, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert streamed.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in streamed.lower()
    assert b"one," in streamed and b"two" in streamed and streamed.endswith(b"0\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 3\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"abc")
    final = await asyncio.wait_for(reader.read(), 10)
    assert final.startswith(b"HTTP/1.1 200") and final.endswith(b"3")
    writer.close()


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closed = True


class _Loop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)


def _coalescing() -> tuple[CoalescingTransport, _Recorder, _Loop]:
    raw, loop = _Recorder(), _Loop()
    return CoalescingTransport(raw, loop), raw, loop  # type: ignore[arg-type]


def test_headers_and_body_go_out_in_one_write() -> None:
    t, raw, loop = _coalescing()
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert raw.writes == [] and len(loop.soon) == 1
    t.write(b"body")
    t.write(b"more")
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]
    t.flush()  # the scheduled flush finds nothing held
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]


def test_a_lone_write_goes_out_on_the_next_turn_and_before_close() -> None:
    t, raw, loop = _coalescing()
    t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert raw.writes == []
    (scheduled,) = loop.soon
    scheduled()  # the loop's next turn
    assert raw.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    t2, raw2, _ = _coalescing()
    t2.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t2.close()
    assert raw2.writes == [b"HTTP/1.1 200 OK\r\n\r\n"] and raw2.closed
    t3, raw3, _ = _coalescing()
    t3.write(b"HTTP/1.1 200 OK\r\n\r\n")
    raw3.closing = True  # the client left: nothing is written to a closing transport
    t3.flush()
    assert raw3.writes == [] and t3.is_closing()
