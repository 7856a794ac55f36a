"""Wire formats of the real backend clients (aiohttp), against loopback servers on free ports."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.encode import npy
from triserve_common import codec
from triserve_gateway.backends import OipV2Client, TorchServeClient
from triserve_gateway.config import BackendConfig
from triserve_gateway.errors import (
    BackendError,
    BackendNotServingError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
)

X = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
Y = np.arange(30, dtype=np.float32).reshape(3, 10)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a loopback HTTP server answering every request with ``handler``; yields its base URL."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


def oip(url: str, timeout_s: float = 5.0) -> OipV2Client:
    return OipV2Client("onnx", BackendConfig(protocol="oip-v2", url=url, timeout_s=timeout_s))


def ts(url: str, management_url: str | None = None, timeout_s: float = 5.0) -> TorchServeClient:
    cfg = BackendConfig(protocol="torchserve", url=url, management_url=management_url, timeout_s=timeout_s)
    return TorchServeClient("torchserve", cfg)


async def test_oip_client_sends_and_reads_binary_tensors(serve: Serve) -> None:
    seen: dict[str, object] = {}

    async def handle(request: web.Request) -> web.Response:
        content = await request.read()
        seen["path"] = request.path
        seen["rid"] = request.headers.get("x-request-id")
        length = codec.parse_header_length(request.headers[codec.HEADER_LENGTH])
        decoded = codec.decode_request(content, length)
        seen["x"] = decoded.tensors["input"]
        assert decoded.wants_binary("logits")
        header = json.loads(content[: int(request.headers[codec.HEADER_LENGTH])])
        assert "data" not in header["inputs"][0]  # binary tensor, no JSON float list
        body, headers = codec.encode_response("mnist", "1", decoded.request.id, {"logits": Y}, binary=True)
        return web.Response(body=body, headers=headers)

    client = oip(await serve(handle))
    y = await client.infer("mnist", None, X, "req-1")
    np.testing.assert_array_equal(y, Y)
    np.testing.assert_array_equal(seen["x"], X)
    assert seen["path"] == "/v2/models/mnist/infer" and seen["rid"] == "req-1"
    await client.infer("mnist", "1", X, None)
    assert seen["path"] == "/v2/models/mnist/versions/1/infer"
    await client.aclose()


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, BackendUnavailableError), (429, BackendUnavailableError), (500, BackendError),
     (404, BackendNotServingError), (400, BackendRejectedError)],
)
async def test_oip_client_classifies_http_errors(serve: Serve, status: int, error: type[Exception]) -> None:
    async def handle(_: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=status)

    client = oip(await serve(handle))
    with pytest.raises(error, match="nope"):
        await client.infer("mnist", None, X, None)
    await client.aclose()


async def test_unreadable_answer_is_a_backend_error(serve: Serve) -> None:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=b"not a v2 body", headers={codec.HEADER_LENGTH: "5"})

    client = oip(await serve(handle))
    with pytest.raises(BackendError, match="unreadable"):
        await client.infer("mnist", None, X, None)
    await client.aclose()


async def test_timeouts_are_their_own_retryable_kind(serve: Serve) -> None:
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=npy(Y))

    url = await serve(slow)
    client = ts(url, timeout_s=0.2)
    with pytest.raises(BackendTimeoutError, match=r"did not answer within 0\.2"):
        await client.infer("mnist", None, X, None)
    assert not await client.health(timeout=0.2)
    release.set()
    await client.aclose()


async def test_torchserve_client_exchanges_npy(serve: Serve) -> None:
    seen: dict[str, object] = {}

    async def management(request: web.Request) -> web.Response:
        assert request.path == "/models/mnist"
        workers = [{"status": "READY"}]
        return web.json_response([{"modelVersion": "1.0", "runtime": "python", "workers": workers}])

    async def inference(request: web.Request) -> web.Response:
        if request.path == "/ping":
            return web.json_response({"status": "Healthy"})
        seen["path"] = request.path
        seen["x"] = np.load(io.BytesIO(await request.read()), allow_pickle=False)
        return web.Response(body=npy(Y), content_type="application/octet-stream")

    client = ts(await serve(inference), await serve(management))
    y = await client.infer("mnist", None, X, "r")
    np.testing.assert_array_equal(y, Y)
    np.testing.assert_array_equal(seen["x"], X)
    assert seen["path"] == "/predictions/mnist"
    await client.infer("mnist", "1.0", X, None)
    assert seen["path"] == "/predictions/mnist/1.0"
    assert await client.health()
    info = await client.describe("mnist")
    assert info["version"] == "1.0" and "torchserve" in info["engine"] and info["workers_ready"] == 1
    await client.aclose()


async def test_torchserve_client_rejects_non_npy_answer(serve: Serve) -> None:
    async def handle(_: web.Request) -> web.Response:
        return web.json_response([0])

    client = ts(await serve(handle))
    with pytest.raises(BackendError, match=r"\.npy"):
        await client.infer("mnist", None, X, None)
    await client.aclose()


async def _npy_server(close_after_answer: bool) -> tuple[asyncio.Server, list[int]]:
    """A raw HTTP/1.1 server answering every request with ``Y`` as ``.npy``; counts connections.

    With ``close_after_answer`` it drops each connection right after answering, without saying
    ``Connection: close`` — the stale keep-alive connection a pool must not reuse blindly.
    """
    body = npy(Y)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
                if close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), connections


@pytest.mark.parametrize("close_after_answer", [False, True])
async def test_pooled_client_reuses_keepalive_and_skips_closed_ones(close_after_answer: bool) -> None:
    server, connections = await _npy_server(close_after_answer)
    port = server.sockets[0].getsockname()[1]
    client = ts(f"http://127.0.0.1:{port}")
    try:
        for _ in range(3):
            np.testing.assert_array_equal(await client.infer("mnist", None, X, None), Y)
            await asyncio.sleep(0.05)  # let a server-side close reach the client
        assert len(connections) == (3 if close_after_answer else 1)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_concurrent_calls_share_the_pool(serve: Serve) -> None:
    peers: set[object] = set()

    async def handle(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        await asyncio.sleep(0.01)
        return web.Response(body=npy(Y))

    client = ts(await serve(handle))
    for _ in range(3):
        results = await asyncio.gather(*(client.infer("mnist", None, X, None) for _ in range(4)))
        assert all(np.array_equal(r, Y) for r in results)
    assert 1 <= len(peers) <= 4  # at most one connection per concurrent call, kept alive across rounds
    await client.aclose()


async def test_unreachable_backend_is_unavailable() -> None:
    server, _ = await _npy_server(False)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = oip(f"http://127.0.0.1:{port}", timeout_s=1.0)
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        await client.infer("mnist", None, X, None)
    assert not await client.health()
    await client.aclose()
