"""Wire formats of the real backend clients, against httpx.MockTransport (no network)."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import numpy as np
import pytest

from tests.support.encode import npy
from triserve_common import codec
from triserve_gateway.backends import OipV2Client, TorchServeClient
from triserve_gateway.config import BackendConfig
from triserve_gateway.errors import (
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
)

X = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
Y = np.arange(30, dtype=np.float32).reshape(3, 10)


def oip(handler: httpx.MockTransport) -> OipV2Client:
    cfg = BackendConfig(protocol="oip-v2", url="http://onnx")
    return OipV2Client("onnx", cfg, httpx.AsyncClient(base_url=cfg.url, transport=handler))


def ts(handler: httpx.MockTransport) -> TorchServeClient:
    cfg = BackendConfig(protocol="torchserve", url="http://ts", management_url="http://ts-mgmt")
    return TorchServeClient("torchserve", cfg, httpx.AsyncClient(base_url=cfg.url, transport=handler))


async def test_oip_client_sends_and_reads_binary_tensors() -> None:
    seen: dict[str, object] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        seen["path"] = request.url.path
        seen["rid"] = request.headers.get("x-request-id")
        decoded = codec.decode_request(
            request.content, codec.parse_header_length(request.headers[codec.HEADER_LENGTH])
        )
        seen["x"] = decoded.tensors["input"]
        assert decoded.wants_binary("logits")
        header = json.loads(request.content[: int(request.headers[codec.HEADER_LENGTH])])
        assert "data" not in header["inputs"][0]  # binary tensor, no JSON float list
        body, headers = codec.encode_response("mnist", "1", decoded.request.id, {"logits": Y}, binary=True)
        return httpx.Response(200, content=body, headers=headers)

    client = oip(httpx.MockTransport(handle))
    y = await client.infer("mnist", None, X, "req-1")
    np.testing.assert_array_equal(y, Y)
    np.testing.assert_array_equal(seen["x"], X)
    assert seen["path"] == "/v2/models/mnist/infer" and seen["rid"] == "req-1"
    await client.infer("mnist", "1", X, None)
    assert seen["path"] == "/v2/models/mnist/versions/1/infer"
    await client.aclose()


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, BackendUnavailableError), (500, BackendError), (404, BackendError), (400, BackendRejectedError)],
)
async def test_oip_client_classifies_http_errors(status: int, error: type[Exception]) -> None:
    client = oip(httpx.MockTransport(lambda r: httpx.Response(status, json={"error": "nope"})))
    with pytest.raises(error, match="nope"):
        await client.infer("mnist", None, X, None)


async def test_connection_errors_and_timeouts_are_retryable_kinds() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(BackendUnavailableError, match="unreachable"):
        await oip(httpx.MockTransport(refuse)).infer("mnist", None, X, None)
    with pytest.raises(BackendTimeoutError):
        await ts(httpx.MockTransport(slow)).infer("mnist", None, X, None)
    assert not await oip(httpx.MockTransport(refuse)).health()


async def test_torchserve_client_exchanges_npy() -> None:
    seen: dict[str, object] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "ts-mgmt":
            return httpx.Response(200, json=[{"modelVersion": "1.0", "runtime": "python",
                                              "workers": [{"status": "READY"}]}])
        if request.url.path == "/ping":
            return httpx.Response(200, json={"status": "Healthy"})
        seen["path"] = request.url.path
        seen["x"] = np.load(io.BytesIO(request.content), allow_pickle=False)
        return httpx.Response(200, content=npy(Y))

    client = ts(httpx.MockTransport(handle))
    y = await client.infer("mnist", None, X, "r")
    np.testing.assert_array_equal(y, Y)
    np.testing.assert_array_equal(seen["x"], X)
    assert seen["path"] == "/predictions/mnist"
    await client.infer("mnist", "1.0", X, None)
    assert seen["path"] == "/predictions/mnist/1.0"
    assert await client.health()
    info = await client.describe("mnist")
    assert info["version"] == "1.0" and "torchserve" in info["engine"] and info["workers_ready"] == 1


async def test_torchserve_client_rejects_non_npy_answer() -> None:
    client = ts(httpx.MockTransport(lambda r: httpx.Response(200, content=json.dumps([0]).encode())))
    with pytest.raises(BackendError, match=r"\.npy"):
        await client.infer("mnist", None, X, None)


async def _npy_server(close_after_answer: bool) -> tuple[asyncio.Server, list[int]]:
    """A tiny HTTP/1.1 server answering every request with ``Y`` as ``.npy``; counts connections.

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
    client = TorchServeClient("torchserve", BackendConfig(protocol="torchserve", url=f"http://127.0.0.1:{port}"))
    try:
        for _ in range(3):
            np.testing.assert_array_equal(await client.infer("mnist", None, X, None), Y)
            await asyncio.sleep(0.05)  # let a server-side close reach the client
        assert len(connections) == (3 if close_after_answer else 1)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_unreachable_backend_is_unavailable() -> None:
    server, _ = await _npy_server(False)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    cfg = BackendConfig(protocol="oip-v2", url=f"http://127.0.0.1:{port}", timeout_s=1.0)
    client = OipV2Client("onnx", cfg)
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        await client.infer("mnist", None, X, None)
    assert not await client.health()
    await client.aclose()
