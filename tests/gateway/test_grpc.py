"""The gateway's KServe v2 gRPC endpoint over fake backends: a real ``grpc.aio`` server on a free
port (the app's lifespan starts it), a real ``grpc.aio`` client (the generated stub)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi import FastAPI

from tests.gateway.fakes import FakeBackend, digit_png, fake_admins, fakes, routing, write_store
from tests.support.grpc_v2 import fp32_request, images_request, outputs_of, pb, stub
from triserve_common import codec
from triserve_common.ports import free_port
from triserve_gateway.app import create_app
from triserve_gateway.grpc_server import GrpcListenerError
from triserve_gateway.grpc_status import grpc_code
from triserve_gateway.settings import GatewaySettings

MAX_BODY = 200_000
GATEWAY_DIR = Path(__file__).resolve().parents[2] / "services" / "gateway"


@dataclass
class Served:
    app: FastAPI
    stub: Any
    backends: dict[str, FakeBackend]

    def count(self, metric: str, **labels: str) -> float:
        """Sum of a counter's samples with ``labels``, from the app's registry."""
        total = 0.0
        for family in self.app.state.registry.collect():
            for s in family.samples:
                if s.name == f"{metric}_total" and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


@asynccontextmanager
async def grpc_gateway(
    tmp_path: Path, backends: dict[str, FakeBackend], **settings: Any
) -> AsyncIterator[Served]:
    port = free_port()
    app = create_app(
        GatewaySettings(model_store=write_store(tmp_path), management_key_file=tmp_path / "mgmt.key",
                        grpc_port=port, max_body_bytes=MAX_BODY, **settings),
        routing=routing(), clients=lambda _: backends,  # type: ignore[arg-type,return-value]
        admins=lambda _: fake_admins(),  # type: ignore[arg-type,return-value]
    )
    app.state.grpc.serve()  # as a gateway process does (workers.serve_gateway)
    async with app.router.lifespan_context(app), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(app, stub(channel), backends)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Served]:
    async with grpc_gateway(tmp_path, fakes()) as served:
        yield served


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_health_and_metadata(gw: Served) -> None:
    assert (await gw.stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await gw.stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await gw.stub.ModelReady(pb.ModelReadyRequest(name="mnist"))).ready
    assert (await gw.stub.ModelReady(pb.ModelReadyRequest(name="mnist", version="1"))).ready
    server = await gw.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "triserve-gateway" and server.version
    meta = await gw.stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist"))
    assert (meta.name, list(meta.versions), meta.platform) == ("mnist", ["1"], "triserve-gateway")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 1, 28, 28])]
    assert [t.name for t in meta.outputs] == ["logits", "probabilities", "label"]


async def test_png_images_as_bytes_typed_and_raw(gw: Served) -> None:
    images = [digit_png(3), digit_png(7)]
    typed = await gw.stub.ModelInfer(images_request(images, outputs=("label", "probabilities")))
    assert not typed.raw_output_contents  # typed in, typed out
    out = outputs_of(typed)
    assert list(out["label"]) == [b"3", b"7"]
    assert out["probabilities"].shape == (2, 10) and np.allclose(out["probabilities"].sum(axis=1), 1.0)
    raw = await gw.stub.ModelInfer(images_request(images, raw=True, id="req-1"))
    assert raw.id == "req-1" and raw.model_name == "mnist" and raw.model_version == "1"
    assert list(outputs_of(raw)["label"]) == [b"3", b"7"]


async def test_fp32_raw_tensor_answers_as_rest(gw: Served) -> None:
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    call = gw.stub.ModelInfer(fp32_request(x, id="abc"),
                              metadata=(("x-backend", "paddle"), ("x-request-id", "trace-1")))
    response = await call
    logits = outputs_of(response)["logits"]
    trailing = dict(await call.trailing_metadata())
    assert (response.id, trailing["x-backend"], trailing["x-model-version"]) == ("abc", "paddle", "1")
    assert trailing["x-request-id"] == "trace-1" and "backend;dur=" in trailing["server-timing"]
    assert gw.backends["paddle"].request_ids[-1] == "trace-1"
    # the same tensor through the REST endpoint
    import httpx

    body, headers = codec.encode_request({"input": x}, outputs=["logits"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw") as client:
        r = await client.post("/v2/models/mnist/infer", content=body,
                              headers={**headers, "X-Backend": "paddle"})
    assert r.status_code == 200
    rest = codec.decode_response(r.content, int(r.headers[codec.HEADER_LENGTH])).outputs["logits"]
    np.testing.assert_array_equal(logits, rest)
    # FP32 rows the REST endpoint takes, typed: [N, 784]
    typed = fp32_request(x.reshape(3, 784))
    del typed.raw_input_contents[:]
    typed.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    np.testing.assert_array_equal(outputs_of(await gw.stub.ModelInfer(typed))["logits"], rest)


def _shape(shape: list[int]) -> pb.ModelInferRequest:
    request = fp32_request(np.zeros((1, 1, 28, 28), np.float32))
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    return request


def _nan() -> pb.ModelInferRequest:
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 0, 0] = np.nan
    return fp32_request(x)


def _two_raw() -> pb.ModelInferRequest:
    request = fp32_request(np.zeros((1, 784), np.float32))
    request.raw_input_contents.append(b"\0" * 4)
    return request


def _datatype(datatype: str) -> pb.ModelInferRequest:
    request = fp32_request(np.zeros((1, 784), np.float32))
    request.inputs[0].datatype = datatype
    return request


ZEROS = np.zeros((1, 784), np.float32)
MISTAKES = {
    "wrong shape": (_shape([1, 27, 28]), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "shape not the data's": (_shape([2, 1, 28, 28]), grpc.StatusCode.INVALID_ARGUMENT, "binary data has"),
    "unknown model": (fp32_request(ZEROS, model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    "unknown version": (fp32_request(ZEROS, model_version="9"), grpc.StatusCode.NOT_FOUND, "9"),
    "no model name": (fp32_request(ZEROS, model=""), grpc.StatusCode.INVALID_ARGUMENT, "model_name"),
    "NaN": (_nan(), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
    "raw entries": (_two_raw(), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    "unknown datatype": (_datatype("FP128"), grpc.StatusCode.INVALID_ARGUMENT, "unsupported datatype"),
    "wrong datatype": (_datatype("INT32"), grpc.StatusCode.INVALID_ARGUMENT, "INT32"),
    "not an image": (images_request([b"GIF89a-not"]), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "unknown output": (fp32_request(ZEROS, outputs=("x",)), grpc.StatusCode.INVALID_ARGUMENT, "output"),
    "too many images": (images_request([digit_png(1)] * 65), grpc.StatusCode.RESOURCE_EXHAUSTED, "images"),
    "message too large": (fp32_request(np.zeros((70, 784), np.float32)), grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "larger than max"),
}


async def test_client_mistakes_get_their_status_never_internal(gw: Served) -> None:
    for what, (request, code, words) in MISTAKES.items():
        error = await rpc_error(gw.stub.ModelInfer(request))
        assert (error.code(), words in (error.details() or "")) == (code, True), (what, error)
    error = await rpc_error(gw.stub.ModelInfer(fp32_request(ZEROS), metadata=(("x-backend", "tf"),)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "tf" in (error.details() or "")
    error = await rpc_error(gw.stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert gw.count("triserve_gateway_requests", status="500") == 0
    assert gw.count("triserve_gateway_grpc_requests", method="ModelInfer", code="INTERNAL") == 0
    assert gw.count("triserve_gateway_grpc_requests", method="ModelInfer", code="NOT_FOUND") == 2
    assert gw.count("triserve_gateway_requests", status="400") >= 8  # in the HTTP request series too
    # still serving after all that
    assert list(outputs_of(await gw.stub.ModelInfer(images_request([digit_png(5)])))["label"]) == [b"5"]


async def test_deadline_and_cancellation(tmp_path: Path) -> None:
    async with grpc_gateway(tmp_path, fakes(delay=2.0)) as gw:
        request = images_request([digit_png(2)])
        # the gateway's own deadline (x-request-timeout, ms): its 504 → DEADLINE_EXCEEDED, with its message
        error = await rpc_error(gw.stub.ModelInfer(request, metadata=(("x-request-timeout", "50"),)))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline of 50 ms" in (error.details() or "")
        assert gw.count("triserve_gateway_requests", status="504") == 1
        # the call's gRPC deadline is the request's deadline
        error = await rpc_error(gw.stub.ModelInfer(request, timeout=0.1))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await poll(lambda: gw.count("triserve_gateway_requests", status="504") == 2, "second 504")
        # a cancelled call cancels the request (499, never a server error)
        call = gw.stub.ModelInfer(request)
        await poll(lambda: sum(len(b.calls) for b in gw.backends.values()) >= 3, "the call at a backend")
        call.cancel()
        await poll(lambda: gw.count("triserve_gateway_requests", status="499") == 1, "a 499")
        assert gw.count("triserve_gateway_requests", status="500") == 0


async def poll(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout}s"
        await asyncio.sleep(0.02)


async def test_inference_key(tmp_path: Path) -> None:
    async with grpc_gateway(tmp_path, fakes(), inference_key="secret-k") as gw:
        assert (await gw.stub.ServerLive(pb.ServerLiveRequest())).live  # health stays open
        assert (await gw.stub.ServerReady(pb.ServerReadyRequest())).ready
        request = images_request([digit_png(4)])
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "secret-k"),)):
            error = await rpc_error(gw.stub.ModelInfer(request, metadata=metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        error = await rpc_error(gw.stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist")))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await gw.stub.ModelInfer(request, metadata=(("authorization", "Bearer secret-k"),))
        assert list(outputs_of(answer)["label"]) == [b"4"]
        assert sum(len(b.calls) for b in gw.backends.values()) == 1  # refused calls reached no backend


async def test_a_port_in_use_is_an_error_and_an_app_serves_grpc_only_when_asked(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = GatewaySettings(model_store=write_store(tmp_path), management_key_file=tmp_path / "k",
                                   grpc_port=port)
        app = create_app(settings, routing=routing(), clients=lambda _: fakes(),  # type: ignore[arg-type,return-value]
                         admins=lambda _: fake_admins())  # type: ignore[arg-type,return-value]
        async with app.router.lifespan_context(app):  # not asked to serve gRPC: the port is left alone
            assert app.state.grpc._server is None
        app.state.grpc.serve()
        with pytest.raises(GrpcListenerError, match=f"127.0.0.1:{port}.*TRISERVE_GATEWAY_GRPC_PORT"):
            await app.state.grpc.start()


def test_status_mapping() -> None:
    code = grpc.StatusCode
    expected = {
        400: code.INVALID_ARGUMENT, 401: code.UNAUTHENTICATED, 403: code.PERMISSION_DENIED,
        404: code.NOT_FOUND, 408: code.DEADLINE_EXCEEDED, 413: code.RESOURCE_EXHAUSTED,
        415: code.INVALID_ARGUMENT, 422: code.INVALID_ARGUMENT, 429: code.RESOURCE_EXHAUSTED,
        499: code.CANCELLED, 500: code.INTERNAL, 502: code.UNAVAILABLE, 503: code.UNAVAILABLE,
        504: code.DEADLINE_EXCEEDED, 418: code.FAILED_PRECONDITION, 507: code.INTERNAL,
    }  # fmt: skip
    assert {status: grpc_code(status) for status in expected} == expected
    assert all(grpc_code(s) != code.INTERNAL for s in range(400, 500))  # a client mistake is never INTERNAL


def test_generated_code_is_what_grpcio_tools_makes_of_the_proto(tmp_path: Path) -> None:
    proto = Path("triserve_gateway/proto/grpc_predict_v2.proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(proto)],
        cwd=GATEWAY_DIR, check=True, capture_output=True,
    )
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        generated = proto.with_name(proto.stem + suffix)
        assert (tmp_path / generated).read_text() == (GATEWAY_DIR / generated).read_text(), (
            f"{generated} is stale: run `make proto`"
        )


def test_grpc_port_setting() -> None:
    assert GatewaySettings().grpc_port == 7070  # TorchServe's gRPC inference port
    with pytest.raises(ValueError, match="need different ports"):
        GatewaySettings(port=9000, grpc_port=9000)
    assert GatewaySettings(grpc_port=0, port=9000).grpc_port == 0  # off
