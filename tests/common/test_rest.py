"""Unit tests of the shared REST surface (error mapping, limits, request ids) over a fake runtime."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from tests.common.runtime_fakes import FakeRuntime, expected_logits
from tests.support.encode import v2_input, v2_request, v2_tensor
from triserve_common import codec
from triserve_common.rest import build_app
from triserve_common.settings import ServiceSettings

LIMIT = 64 * 1024
INFER = "/v2/models/mnist/infer"


def make_app(runtime: FakeRuntime | None = None) -> FastAPI:
    runtime = runtime or FakeRuntime(max_batch_size=8)
    runtime.load()
    return build_app(ServiceSettings(max_body_bytes=LIMIT), runtime, server_name="test", server_version="9.9")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def json_body(shape: list[int], datatype: str = "FP32", name: str = "input") -> dict[str, object]:
    fill = 0 if "INT" in datatype else 0.5  # JSON integers for integer datatypes (strict codec)
    return v2_request(v2_input(name, shape, datatype, fill=fill))


async def test_health_and_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2")).json()["name"] == "test"
    for path in ("/v2/models/mnist", "/v2/models/mnist/versions/1"):
        meta = (await client.get(path)).json()
        assert meta["parameters"]["engine"] == "fake-engine"
        assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert (await client.get("/v2/models/mnist/versions/1/ready")).json() == {"name": "mnist", "ready": True}


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/mnist/versions/7",
        "/v2/models/nope/ready",
        "/v2/models/mnist/versions/7/ready",
    ],
)
async def test_unknown_model_or_version_is_404(client: httpx.AsyncClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status_code == 404 and "not found" in resp.json()["error"]


async def test_json_and_binary_infer_agree(client: httpx.AsyncClient) -> None:
    x = np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32)
    body, headers = codec.encode_request({"input": x}, outputs=["logits"])
    binary = await client.post(INFER, content=body, headers=headers)
    assert binary.status_code == 200 and binary.headers["content-type"] == codec.BINARY_CONTENT_TYPE
    out_b = codec.decode_response(binary.content, int(binary.headers[codec.HEADER_LENGTH])).outputs["logits"]
    as_json = v2_request(v2_tensor("input", x))
    resp = await client.post("/v2/models/mnist/versions/1/infer", json=as_json)
    assert resp.status_code == 200
    out_j = codec.decode_response(resp.content, None).outputs["logits"]
    np.testing.assert_array_equal(out_b, out_j)
    np.testing.assert_array_equal(out_b, expected_logits(x))


@pytest.mark.parametrize(
    ("content", "headers", "status", "fragment"),
    [
        (b"{oops", {}, 400, "not valid JSON"),
        (b"", {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "invalid inference request"),
        (json.dumps({"inputs": [{"name": "input"}]}).encode(), {}, 400, "invalid inference request"),
        (json.dumps(json_body([1, 1, 28, 28], name="x")).encode(), {}, 400, "unexpected input 'x'"),
        (json.dumps(json_body([1, 28, 28])).encode(), {}, 400, "does not match the model's [-1, 1, 28, 28]"),
        (json.dumps(json_body([1, 1, 28, 28], "INT64")).encode(), {}, 400, "datatype INT64 does not match"),
        (json.dumps(json_body([1, 1, 28, 28], "FP99")).encode(), {}, 400, "unsupported datatype"),
        (b"{}", {codec.HEADER_LENGTH: "abc"}, 400, "must be an integer"),
        (b"{}", {codec.HEADER_LENGTH: "-3"}, 400, "must not be negative"),
        (b"{}", {codec.HEADER_LENGTH: "99"}, 400, "larger than the body"),
    ],
)
async def test_client_mistakes_are_4xx_with_a_message(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    resp = await client.post(INFER, content=content, headers=headers)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]


async def test_binary_data_size_mismatch_is_400(client: httpx.AsyncClient) -> None:
    x = np.zeros((2, 1, 28, 28), np.float32)
    body, headers = codec.encode_request({"input": x})
    resp = await client.post(INFER, content=body[:-4], headers=headers)
    assert resp.status_code == 400 and "truncated" in resp.json()["error"]
    resp = await client.post(INFER, content=body + b"xx", headers=headers)
    assert resp.status_code == 400 and "bytes after the last binary input" in resp.json()["error"]


async def test_oversize_body_is_413_by_content_length(client: httpx.AsyncClient) -> None:
    resp = await client.post(INFER, content=b"x" * (LIMIT + 1))
    assert resp.status_code == 413 and "exceeds the limit" in resp.json()["error"]


async def test_oversize_body_is_413_while_streaming(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * (LIMIT // 4)

    resp = await client.post(INFER, content=chunks())
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413 and "exceeds the limit" in resp.json()["error"]


async def test_request_id_echoed_or_generated(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v2/health/live", headers={"X-Request-Id": "trace-123"})
    assert resp.headers["x-request-id"] == "trace-123"
    resp = await client.post(INFER, content=b"{bad", headers={"X-Request-Id": "err-1"})
    assert resp.status_code == 400 and resp.headers["x-request-id"] == "err-1"
    generated = [(await client.get("/v2/health/live")).headers["x-request-id"] for _ in range(3)]
    assert len(set(generated)) == 3
    for rid in generated:  # uuid4().hex's format: 32 hex digits, version 4, RFC 4122 variant
        parsed = uuid.UUID(rid)
        assert parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


async def test_engine_failure_is_500_json() -> None:
    transport = httpx.ASGITransport(app=make_app(FakeRuntime(fail=True)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        resp = await c.post(INFER, json=json_body([1, 1, 28, 28]))
    assert resp.status_code == 500 and "inference failed" in resp.json()["error"]


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v3")).status_code == 404
    assert (await client.get(INFER)).status_code == 405


async def test_metrics_count_requests_and_name_engine(client: httpx.AsyncClient) -> None:
    await client.post(INFER, json=json_body([2, 1, 28, 28]))
    await client.post(INFER, content=b"{")
    await client.post("/v2/models/other/infer", json=json_body([1, 1, 28, 28]))
    await client.post(INFER, content=b"x" * (LIMIT + 1))
    text = (await client.get("/metrics")).text
    assert 'triserve_inference_requests_total{model="mnist",status="200",version="1"} 1.0' in text
    assert 'triserve_inference_requests_total{model="mnist",status="400",version="1"} 1.0' in text
    assert 'triserve_inference_requests_total{model="mnist",status="413",version="1"} 1.0' in text
    assert 'triserve_inference_requests_total{model="_unknown",status="404",version="_unknown"} 1.0' in text
    assert 'triserve_inference_batch_size_sum{model="mnist",version="1"} 2.0' in text
    assert 'triserve_inference_request_duration_seconds_count{model="mnist",version="1"} 3.0' in text
    assert 'engine="fake-engine"' in text and "triserve_model_ready" in text
