"""Read timeouts of a listener, over real sockets to a real uvicorn server (triserve_common.limits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from tests.support.procs import free_port
from triserve_common.errors import install_error_handlers
from triserve_common.limits import BodyTimeoutMiddleware, ServerLimits, uvicorn_options
from triserve_common.server import read_body


@pytest.fixture
async def server() -> AsyncIterator[int]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=0.3)

    @app.put("/echo")
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await read_body(request, 1 << 20))))

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
