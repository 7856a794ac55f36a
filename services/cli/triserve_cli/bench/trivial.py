"""A trivially cheap HTTP endpoint for calibrating the load generator.

One process, uvloop + httptools (the parser uvicorn uses), no framework: every request, whatever its
method, path or body, is answered ``200`` with a fixed body. Run with
``python -m triserve_cli.bench.trivial PORT BODY``; ``GET /ping`` is its readiness probe like any path.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from typing import cast

import httptools
import uvloop


class _Protocol(asyncio.Protocol):
    def __init__(self, reply: bytes) -> None:
        self._reply = reply
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(self._reply)


def reply_bytes(body: bytes, headers: Mapping[str, str] | None = None, status: str = "200 OK") -> bytes:
    """A fixed HTTP/1.1 keep-alive response carrying ``body`` (text/plain unless ``headers`` say)."""
    fields = {"content-type": "text/plain", **(headers or {}), "content-length": str(len(body))}
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + body


async def serve(port: int, reply: bytes, host: str = "127.0.0.1") -> None:
    """Answer every request on ``host:port`` with the raw response ``reply``, forever."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(reply), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """``python -m triserve_cli.bench.trivial PORT [BODY]``."""
    args = sys.argv[1:] if argv is None else argv
    uvloop.run(serve(int(args[0]), reply_bytes((args[1] if len(args) > 1 else "ok").encode())))


if __name__ == "__main__":
    main()
