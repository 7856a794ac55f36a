"""What KServe and TorchServe clients send and parse, against the gateway (issue 14, item 3).

In process over fake backends (the same requests against the real backends run between the
hostile corpus' categories: ``tests/hostile/corpus_http.normal``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.gateway.fakes import SPEC, FakeBackend, digit_png, fake_admins, fakes, routing, write_store
from triserve_common import codec
from triserve_gateway.app import create_app
from triserve_gateway.preprocess import ImagePreprocessor
from triserve_gateway.settings import GatewaySettings

INFER = "/v2/models/mnist/infer"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    backends: dict[str, FakeBackend] = fakes()
    settings = GatewaySettings(model_store=write_store(tmp_path))
    app = create_app(settings, routing=routing(), clients=lambda _: backends,  # type: ignore[arg-type,return-value]
                     admins=lambda _: fake_admins())  # type: ignore[arg-type,return-value]
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    async with app.router.lifespan_context(app), http as c:
        yield c


def digit_rows(*digits: int) -> np.ndarray:
    """float32 [N, 784]: the digits as the fake backends classify them, flattened."""
    pre = ImagePreprocessor(SPEC)
    return np.concatenate([pre(digit_png(d)) for d in digits]).reshape(len(digits), 784)


def labels_of(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    return list(outputs["label"]["data"])


async def test_bytes_with_shape_minus_one_is_one_element_per_item(client: httpx.AsyncClient) -> None:
    data = [base64.b64encode(digit_png(d)).decode() for d in (4, 2)]
    req = {
        "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [-1], "data": data}],
        "outputs": [{"name": "label"}],
    }
    assert labels_of(await client.post(INFER, json=req)) == ["4", "2"]
    items = np.empty(2, dtype=object)
    items[:] = [digit_png(8), digit_png(1)]
    body, headers = codec.encode_request({"image": items}, outputs=["label"])
    head_len = int(headers[codec.HEADER_LENGTH])
    head = json.loads(body[:head_len])
    head["inputs"][0]["shape"] = [-1]
    new_head = json.dumps(head).encode()
    headers[codec.HEADER_LENGTH] = str(len(new_head))
    r = await client.post(INFER, content=new_head + body[head_len:], headers=headers)
    out = codec.decode_response(r.content, int(r.headers[codec.HEADER_LENGTH]))
    assert [v.decode() for v in out.outputs["label"]] == ["8", "1"]


@pytest.mark.parametrize(
    ("shape", "digits"),
    [
        ([2, 28, 28], (3, 9)),
        ([2, 784], (5, 0)),
        ([28, 28], (7,)),
        ([784], (6,)),
        ([1, 28, 28], (2,)),
        ([2, 1, 28, 28], (1, 4)),
        ([2, 1, 784], (8, 3)),
    ],
)
async def test_fp32_images_in_the_shapes_clients_send(
    client: httpx.AsyncClient, shape: list[int], digits: tuple[int, ...]
) -> None:
    data = digit_rows(*digits).reshape(shape)
    req = {
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": shape, "data": data.tolist()}],
        "outputs": [{"name": "label"}],
    }
    assert labels_of(await client.post(INFER, json=req)) == [str(d) for d in digits]


@pytest.mark.parametrize("shape", [[2, 392], [28, 27], [1, 2, 392], [3, 28, 28, 1, 2]])
async def test_fp32_shapes_that_are_not_images_are_400(client: httpx.AsyncClient, shape: list[int]) -> None:
    count = int(np.prod(shape))
    req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [0.0] * count}]}
    r = await client.post(INFER, json=req)
    assert r.status_code == 400
    assert "not rows of the model's input" in r.json()["error"] and "[N, 784]" in r.json()["error"]


async def test_torchserve_errors_as_torchserve_answers_them(client: httpx.AsyncClient) -> None:
    r = await client.put("/predictions/resnet", content=digit_png(1))
    assert r.status_code == 404
    assert r.json() == {
        "code": 404,
        "type": "ModelNotFoundException",
        "message": "model 'resnet' is not routed (models: mnist)",
    }
    r = await client.put("/predictions/mnist", content=b"not an image")
    assert r.status_code == 415 and r.json()["code"] == 415
    assert r.json()["type"] == "UnsupportedMediaTypeException"
    r = await client.get("/v2/models/resnet")
    assert r.status_code == 404 and r.json() == {"error": "model 'resnet' is not routed (models: mnist)"}


@pytest.mark.parametrize(("method", "path"), [("GET", "/api-description"), ("OPTIONS", "/")])
async def test_api_description_as_torchserve_serves_it(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    r = await client.request(method, path)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc == (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    for op_path in ("/predictions/{model_name}", "/v2/models/{model_name}/infer", "/api-description", "/"):
        assert op_path in doc["paths"]
    ops = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ops) == len(set(ops))
