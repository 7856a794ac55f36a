"""The gateway's HTTP API (TorchServe-style + OIP v2) over fake backends, in process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from tests.gateway.fakes import FakeBackend, digit_png, fake_admins, fakes, gray_png, routing, write_store
from tests.support.encode import bytes_items, v2_images, v2_input, v2_request
from triserve_common import codec
from triserve_gateway.app import create_app
from triserve_gateway.errors import BackendUnavailableError
from triserve_gateway.settings import GatewaySettings


def ts_error(r: httpx.Response) -> str:
    """The message of an error of the TorchServe API, checking TorchServe's error shape."""
    body = r.json()
    assert set(body) == {"code", "type", "message"} and body["code"] == r.status_code, body
    assert body["type"].endswith("Exception")
    return str(body["message"])


@pytest.fixture
def backends() -> dict[str, FakeBackend]:
    return fakes()


@pytest.fixture
async def app(tmp_path: Path, backends: dict[str, FakeBackend]) -> AsyncIterator[FastAPI]:
    settings = GatewaySettings(model_store=write_store(tmp_path), max_body_bytes=200_000,
                               max_image_pixels=1_000_000, management_key_file=tmp_path / "mgmt.key")
    admins = fake_admins()
    app = create_app(settings, routing=routing(), clients=lambda _: backends,  # type: ignore[arg-type,return-value]
                     admins=lambda _: admins)  # type: ignore[arg-type,return-value]
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


async def test_predictions_raw_body_answers_like_torchserve(client: httpx.AsyncClient) -> None:
    for d in range(10):
        r = await client.put("/predictions/mnist", content=digit_png(d))
        assert r.status_code == 200
        assert r.content == str(d).encode()  # TorchServe's stock MNIST answer: just the digit
        assert r.headers["x-backend"] in ("onnx", "paddle", "torchserve")
        assert r.headers["x-model-version"] == "1"
        assert r.headers["x-request-id"]
        timing = r.headers["server-timing"]
        for stage in ("preprocess", "queue", "backend", "total"):
            assert f"{stage};dur=" in timing
    r = await client.post("/predictions/mnist/1", content=digit_png(4))
    assert r.text == "4"


async def test_request_id_is_propagated(client: httpx.AsyncClient, backends: dict[str, FakeBackend]) -> None:
    r = await client.post("/predictions/mnist", content=digit_png(2), headers={"X-Request-Id": "abc-123",
                                                                                  "X-Backend": "paddle"})
    assert r.headers["x-request-id"] == "abc-123"
    assert backends["paddle"].request_ids[-1] == "abc-123"


async def test_multipart_several_files_several_answers(client: httpx.AsyncClient) -> None:
    files = [("data", ("0.png", digit_png(0), "image/png")), ("data", ("7.png", digit_png(7), "image/png"))]
    r = await client.post("/predictions/mnist", files=files)
    assert r.status_code == 200 and r.json() == [0, 7]
    r = await client.post("/predictions/mnist", files=[("data", ("3.png", digit_png(3), "image/png"))])
    assert r.text == "3"


async def test_multipart_raw_body_in_order_with_text_fields_ignored(client: httpx.AsyncClient) -> None:
    png0, png9 = digit_png(0), digit_png(9)
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="data"; filename="9.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png9 + b"\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="data"; filename="0.png"\r\n\r\n' + png0 + b"\r\n"
        b"--XyZ--\r\n"
    )
    r = await client.post("/predictions/mnist", content=body,
                          headers={"Content-Type": 'multipart/form-data; boundary="XyZ"'})
    assert r.status_code == 200 and r.json() == [9, 0]


@pytest.mark.parametrize(
    ("content_type", "body", "needle"),
    [
        ("multipart/form-data", b"--b\r\n\r\nx\r\n--b--\r\n", "boundary"),
        ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n',
         "name"),
        ("multipart/form-data; boundary=b", b"--b\r\nno header end\r\n--b--\r\n", "malformed"),
        ("multipart/form-data; boundary=b", b"", "without a file part"),
        ("multipart/form-data; boundary=b",
         b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n', "without a file part"),
    ],
)
async def test_multipart_errors_are_400(client: httpx.AsyncClient, content_type: str, body: bytes,
                                        needle: str) -> None:
    r = await client.post("/predictions/mnist", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert "multipart" in ts_error(r) and needle in ts_error(r)


async def test_multipart_body_limit_is_413_before_parsing(client: httpx.AsyncClient) -> None:
    files = [("data", (f"{i}.png", b"\0" * 60_000, "image/png")) for i in range(4)]
    r = await client.post("/predictions/mnist", files=files)
    assert r.status_code == 413 and "exceeds" in ts_error(r)


async def test_topk_option(client: httpx.AsyncClient) -> None:
    r = await client.post("/predictions/mnist?topk=3", content=digit_png(5))
    body = r.json()
    assert next(iter(body)) == "5" and len(body) == 3
    assert body["5"] > 0.99 and sum(body.values()) <= 1.0 + 1e-6
    assert r.text.startswith("{\n  ")  # indented like TorchServe
    r = await client.post("/predictions/mnist", content=digit_png(1), headers={"X-TopK": "2"})
    assert next(iter(r.json())) == "1"
    r = await client.post("/predictions/mnist?topk=11", content=digit_png(1))
    assert r.status_code == 400 and "topk" in ts_error(r)


async def test_forced_backend_header_and_query(client: httpx.AsyncClient) -> None:
    for name in ("onnx", "paddle", "torchserve"):
        r = await client.post("/predictions/mnist", content=digit_png(6), headers={"X-Backend": name})
        assert r.headers["x-backend"] == name and r.text == "6"
        r = await client.post(f"/predictions/mnist?backend={name}", content=digit_png(6))
        assert r.headers["x-backend"] == name
    r = await client.post("/predictions/mnist", content=digit_png(6), headers={"X-Backend": "triton"})
    assert r.status_code == 400 and "triton" in ts_error(r)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"this is not an image", 415, "not an image"),
        (gray_png(3, size=(300, 300))[:200], 422, "could not be decoded"),
        (gray_png(0, size=(2000, 2000)), 413, "pixels"),
        (b"\0" * 300_000, 413, "exceeds"),
        (b"", 415, "empty"),
    ],
)
async def test_client_errors_are_json_with_their_code(
    client: httpx.AsyncClient, body: bytes, status: int, needle: str
) -> None:
    r = await client.post("/predictions/mnist", content=body)
    assert r.status_code == status
    assert needle in ts_error(r)


async def test_unknown_model_or_version_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.post("/predictions/cifar", content=digit_png(1))).status_code == 404
    r = await client.post("/predictions/mnist/9", content=digit_png(1))
    assert r.status_code == 404 and "version" in ts_error(r)


async def test_no_healthy_backend_is_503(client: httpx.AsyncClient, app: FastAPI,
                                         backends: dict[str, FakeBackend]) -> None:
    for f in backends.values():
        f.fail_with = BackendUnavailableError("connection refused")
    r = await client.post("/predictions/mnist", content=digit_png(1))
    assert r.status_code == 503
    for f in backends.values():
        f.healthy = False
    await app.state.gateway.check_health()
    r = await client.post("/predictions/mnist", content=digit_png(1))
    assert r.status_code == 503 and "no healthy backend" in ts_error(r)
    assert r.headers["retry-after"] == "1"
    assert (await client.get("/ping")).json() == {"status": "Unhealthy"}
    assert (await client.get("/v2/health/ready")).status_code == 503


async def test_ping_and_no_management_routes_on_the_inference_port(client: httpx.AsyncClient) -> None:
    r = await client.get("/ping")
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}
    # TorchServe's inference port has no /models: backend URLs and errors live on the management port
    for path in ("/models", "/models/mnist", "/metrics"):
        assert (await client.get(path)).status_code == 404


async def test_v2_health_and_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2")).json()["name"] == "triserve-gateway"
    meta = (await client.get("/v2/models/mnist")).json()
    assert meta["name"] == "mnist" and meta["versions"] == ["1"]
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert (await client.get("/v2/models/mnist/versions/1")).status_code == 200
    assert (await client.get("/v2/models/mnist/ready")).json() == {"name": "mnist", "ready": True}
    assert (await client.get("/v2/models/mnist/versions/2/ready")).status_code == 404


async def test_v2_bytes_json_and_binary_and_fp32_agree(client: httpx.AsyncClient) -> None:
    pngs = [digit_png(d) for d in (3, 8, 1)]
    req = v2_request(v2_images("image", pngs), outputs=["logits", "label", "probabilities"], id="q1")
    r = await client.post("/v2/models/mnist/infer", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "q1" and body["model_version"] == "1"
    outs = {o["name"]: o for o in body["outputs"]}
    assert outs["label"]["data"] == ["3", "8", "1"]
    logits_json = np.asarray(outs["logits"]["data"], np.float32).reshape(outs["logits"]["shape"])

    # binary BYTES (raw PNGs), binary output
    data, headers = codec.encode_request({"image": bytes_items(pngs)}, outputs=["logits"])
    r = await client.post("/v2/models/mnist/infer", content=data, headers=headers)
    assert r.status_code == 200, r.text
    dec = codec.decode_response(r.content, int(r.headers[codec.HEADER_LENGTH]))
    np.testing.assert_array_equal(dec.outputs["logits"], logits_json)

    # FP32 passthrough of the same images, preprocessed client-side
    from tests.gateway.fakes import SPEC
    from triserve_gateway.preprocess import ImagePreprocessor

    x = ImagePreprocessor(SPEC).batch(pngs)
    data, headers = codec.encode_request({"input": x}, outputs=["logits"])
    r = await client.post("/v2/models/mnist/infer", content=data, headers=headers)
    dec = codec.decode_response(r.content, int(r.headers[codec.HEADER_LENGTH]))
    np.testing.assert_array_equal(dec.outputs["logits"], logits_json)
    assert r.headers["x-backend"] and "backend;dur=" in r.headers["server-timing"]


@pytest.mark.parametrize(
    ("req", "status", "needle"),
    [
        (v2_request(v2_input("input", [1, 27, 28], fill=0.0)), 400, "not rows of the model's input"),
        (v2_request(v2_input("image", [1], "BYTES", ["!!notbase64"])), 400, "base64"),
        (v2_request(v2_images("image", [b"text"])), 415, "not an image"),
        (v2_request(v2_input("x", [1], "INT32", [1])), 400, "INT32"),
        (v2_request(), 400, "exactly one input"),
        (v2_request(v2_input("input", [1, 1, 28, 28], fill=0.0), outputs=["nope"]), 400, "unknown output"),
        ({"bogus": 1}, 400, "invalid"),
    ],
)
async def test_v2_client_errors(
    client: httpx.AsyncClient, req: dict[str, object], status: int, needle: str
) -> None:
    r = await client.post("/v2/models/mnist/infer", content=json.dumps(req))
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


async def test_metrics_show_traffic_by_backend(app: FastAPI, client: httpx.AsyncClient) -> None:
    for name in ("onnx", "paddle"):
        await client.post("/predictions/mnist", content=digit_png(1), headers={"X-Backend": name})
    await client.post("/predictions/mnist", content=b"junk")
    # unknown versions and models share one label value each: clients cannot grow the label set
    for path in ("/predictions/mnist/9", "/predictions/mnist/x1", "/predictions/nope/1", "/predictions/no"):
        assert (await client.post(path, content=digit_png(1))).status_code == 404
    metrics = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.state.metrics_app), base_url="http://m")
    async with metrics:
        text = (await metrics.get("/metrics")).text
    total = "triserve_gateway_requests_total"
    assert f'{total}{{backend="onnx",model="mnist",status="200",version="1"}} 1.0' in text
    assert f'{total}{{backend="paddle",model="mnist",status="200",version="1"}} 1.0' in text
    assert f'{total}{{backend="none",model="mnist",status="415",version="1"}} 1.0' in text
    assert f'{total}{{backend="none",model="mnist",status="404",version="_unknown"}} 2.0' in text
    assert f'{total}{{backend="none",model="_unknown",status="404",version="_unknown"}} 2.0' in text
    stage = "triserve_gateway_stage_duration_seconds_count"
    assert f'{stage}{{backend="onnx",model="mnist",stage="backend",version="1"}}' in text
    for name in (
        "triserve_gateway_stage_duration_seconds_bucket",
        "triserve_gateway_request_duration_seconds",
        "triserve_gateway_requests_in_flight",
        "triserve_gateway_batch_size_bucket",
        'triserve_gateway_backend_up{backend="onnx"} 1.0',
    ):
        assert name in text


async def test_openapi_documents_both_apis(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/predictions/{model_name}" in paths and "/v2/models/{model_name}/infer" in paths
