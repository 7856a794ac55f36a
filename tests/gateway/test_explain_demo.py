"""The gateway's explanation endpoints and demo routes over fake backends, in process.

The fake TorchServe backend "explains" with a simple rule (attribution = input - baseline, target =
its prediction) so the gateway's own work can be checked: bounds, forwarding, shapes, errors.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.gateway.fakes import (
    SPEC,
    FakeBackend,
    asgi_client,
    classify,
    digit_png,
    fakes,
    gray_png,
    routing,
    running_app,
    write_store,
)
from triserve_common import codec
from triserve_gateway.app import create_app
from triserve_gateway.demo import STATIC_DIR
from triserve_gateway.errors import BackendRejectedError
from triserve_gateway.settings import GatewaySettings

BASELINE = -SPEC.mean[0] / SPEC.std[0]
TWO_FILES = {"files": [("data", ("a.png", digit_png(1))), ("data", ("b.png", digit_png(2)))]}


class ExplainingFake(FakeBackend):
    """Fake TorchServe backend with the handler's explanation answer format."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.explain_headers: list[dict[str, str]] = []
        self.answer: Any = None  # override the answer (malformed-backend tests)
        self.reject: BackendRejectedError | None = None

    async def explain(
        self, model: str, version: str | None, x: np.ndarray, request_id: str | None,
        headers: Mapping[str, str],
    ) -> Any:
        self.explain_headers.append(dict(headers))
        if self.reject is not None:
            raise self.reject
        if self.answer is not None:
            return self.answer
        logits = classify(x)
        target = headers.get("X-Explain-Target")
        return {
            "method": "integrated_gradients",
            "steps": int(headers["X-Explain-Steps"]),
            "baseline": [BASELINE],
            "explanations": [
                {
                    "target": int(target) if target is not None else int(row.argmax()),
                    "logits": row.tolist(),
                    "attributions": (img - BASELINE).tolist(),
                    "convergence_delta": 0.01,
                }
                for row, img in zip(logits, x, strict=True)
            ],
        }


@pytest.fixture
def backends() -> dict[str, FakeBackend]:
    b = fakes()
    b["torchserve"] = ExplainingFake("torchserve")
    return b


@pytest.fixture
async def client(tmp_path: Path, backends: dict[str, FakeBackend]) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        model_store=write_store(tmp_path), max_body_bytes=200_000, explain_max_steps=64,
        management_key_file=tmp_path / "key",
    )
    async with running_app(settings, backends) as app, asgi_client(app) as c:
        yield c


def fake(backends: dict[str, FakeBackend]) -> ExplainingFake:
    ts = backends["torchserve"]
    assert isinstance(ts, ExplainingFake)
    return ts


async def test_explanations_torchserve_style(
    client: httpx.AsyncClient, backends: dict[str, FakeBackend]
) -> None:
    r = await client.put("/explanations/mnist", content=digit_png(6))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "mnist" and body["model_version"] == "1" and body["backend"] == "torchserve"
    assert body["method"] == "integrated_gradients" and body["steps"] == 32  # the default
    [e] = body["explanations"]
    assert e["label"] == "6" and e["target"] == 6 and e["probability"] > 0.99 and e["shape"] == [1, 28, 28]
    attr = np.asarray(e["attributions"])
    expected = (26 * 6 + 13) / 255.0 / SPEC.std[0]  # the fake's rule: preprocessed input - baseline
    assert attr.shape == (1, 28, 28) and np.allclose(attr, expected, atol=1e-5)
    assert r.headers["x-backend"] == "torchserve" and r.headers["x-model-version"] == "1"
    assert "backend;dur=" in r.headers["server-timing"]
    assert fake(backends).explain_headers[-1] == {"X-Explain-Steps": "32"}
    # steps and target by query or header, version in the path
    r = await client.post("/explanations/mnist/1?steps=8&target=3", content=digit_png(6))
    assert r.status_code == 200 and r.json()["steps"] == 8 and r.json()["explanations"][0]["label"] == "3"
    assert fake(backends).explain_headers[-1] == {"X-Explain-Steps": "8", "X-Explain-Target": "3"}
    r = await client.post("/explanations/mnist", content=digit_png(2), headers={"X-Explain-Steps": "16"})
    assert r.json()["steps"] == 16
    assert backends["onnx"].calls == [] and backends["paddle"].calls == []  # only TorchServe explains


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "words"),
    [
        ("/explanations/mnist?steps=65", {}, 400, "steps must be between 1 and 64"),
        ("/explanations/mnist?steps=x", {}, 400, "steps must be an integer"),
        ("/explanations/mnist?target=11", {}, 400, "target '11' is not a class"),
        ("/explanations/mnist", {"headers": {"X-Backend": "onnx"}}, 400, "does not explain"),
        ("/explanations/mnist", {"content": b"hello"}, 415, "not an image"),
        ("/explanations/mnist", {"content": b"x" * 300_000}, 413, "exceeds the limit"),
        ("/explanations/nope", {}, 404, "not routed"),
        ("/explanations/mnist/9", {}, 404, "version '9'"),
        ("/explanations/mnist", TWO_FILES,
         413, "at most 1 image"),
    ],
)
async def test_explanation_client_errors(
    client: httpx.AsyncClient, backends: dict[str, FakeBackend], path: str, kwargs: dict[str, Any],
    status: int, words: str,
) -> None:
    if "content" not in kwargs and "files" not in kwargs:
        kwargs = {**kwargs, "content": digit_png(1)}
    r = await client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]
    assert fake(backends).explain_headers == []  # refused before reaching the backend


async def test_explanation_backend_failures(
    client: httpx.AsyncClient, backends: dict[str, FakeBackend]
) -> None:
    ts = fake(backends)
    ts.reject = BackendRejectedError("backend 'torchserve' answered 400: steps too big", status_code=400)
    r = await client.post("/explanations/mnist", content=digit_png(1))
    assert r.status_code == 400 and "steps too big" in r.json()["message"]
    ts.reject = None
    ts.answer = {"explanations": [{"attributions": [[1.0]]}]}
    r = await client.post("/explanations/mnist", content=digit_png(1))
    assert r.status_code == 502 and "unusable explanations" in r.json()["message"]
    ts.answer = None
    ts.healthy = False
    app_gateway = client._transport.app.state.gateway  # type: ignore[attr-defined]
    await app_gateway.check_health()
    r = await client.post("/explanations/mnist", content=digit_png(1))
    assert r.status_code == 503 and "torchserve: unhealthy" in r.json()["message"]


async def test_model_without_torchserve_backend(tmp_path: Path, backends: dict[str, FakeBackend]) -> None:
    settings = GatewaySettings(model_store=write_store(tmp_path), management_key_file=tmp_path / "key")
    only_onnx = routing(weights={"onnx": 1})
    app = create_app(settings, routing=only_onnx, clients=lambda _: backends)  # type: ignore[arg-type,return-value]
    async with app.router.lifespan_context(app), asgi_client(app) as c:
        r = await c.post("/explanations/mnist", content=digit_png(1))
        assert r.status_code == 404 and "no TorchServe backend" in r.json()["message"]


async def test_v2_explain(client: httpx.AsyncClient, backends: dict[str, FakeBackend]) -> None:
    req = {
        "id": "e1",
        "parameters": {"steps": 4, "target": "5"},
        "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                    "data": [base64.b64encode(digit_png(9)).decode()]}],
    }
    r = await client.post("/v2/models/mnist/explain", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "e1" and body["model_version"] == "1"
    assert body["parameters"] == {"method": "integrated_gradients", "steps": 4, "backend": "torchserve"}
    out = {o["name"]: o for o in body["outputs"]}
    assert out["attributions"]["shape"] == [1, 1, 28, 28] and out["attributions"]["datatype"] == "FP32"
    assert out["label"]["data"] == ["5"] and out["convergence_delta"]["shape"] == [1]
    # an FP32 tensor, binary outputs, versioned path
    x = np.zeros((1, 1, 28, 28), np.float32)
    body_bytes, headers = codec.encode_request({"input": x}, outputs=["attributions"], binary=True)
    r = await client.post("/v2/models/mnist/versions/1/explain", content=body_bytes, headers=headers)
    assert r.status_code == 200, r.text
    decoded = codec.decode_response(r.content, codec.parse_header_length(r.headers.get(codec.HEADER_LENGTH)))
    np.testing.assert_allclose(decoded.outputs["attributions"], x - BASELINE, atol=1e-5)
    # client mistakes
    bad = {"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES",
                       "data": [base64.b64encode(digit_png(1)).decode()] * 2}]}
    r = await client.post("/v2/models/mnist/explain", json=bad)
    assert r.status_code == 413 and "at most 1 image" in r.json()["error"]
    bad = {**req, "parameters": {"steps": 1000}}
    r = await client.post("/v2/models/mnist/explain", json=bad)
    assert r.status_code == 400 and "steps" in r.json()["error"]
    bad = {"inputs": [{"name": "input", "shape": [1, 1, 27, 28], "datatype": "FP32", "data": [0.0] * 756}]}
    r = await client.post("/v2/models/mnist/explain", json=bad)
    assert r.status_code == 400 and "not rows of the model's input" in r.json()["error"]


async def test_demo_page_and_assets(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/demo/"
    r = await client.get("/?model=fashion")  # the page opens the model named in its query
    assert r.status_code == 307 and r.headers["location"] == "/demo/?model=fashion"
    r = await client.get("/demo/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    referenced = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert "static/demo.js" in referenced and "static/demo.css" in referenced
    for ref in referenced:
        asset = await client.get(f"/demo/{ref}")
        assert asset.status_code == 200, ref
    js = (await client.get("/demo/static/demo.js")).text
    assert 'from "./samples.js"' in js and (await client.get("/demo/static/samples.js")).status_code == 200
    # nothing from the internet: no absolute URL in any shipped asset (the SVG namespace aside)
    for path in STATIC_DIR.iterdir():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//cdn|@import", text), path.name


async def test_demo_lists_models_without_internals(client: httpx.AsyncClient) -> None:
    (mnist,) = (await client.get("/demo/models")).json()["models"]
    listed = (mnist["modelName"], mnist["modelVersion"], mnist["versions"], mnist["ready"])
    assert listed == ("mnist", "1", ["1"], True)
    assert mnist["backends"] == [
        {"name": name, "protocol": protocol, "health": "healthy"}
        for name, protocol in (("onnx", "oip-v2"), ("paddle", "oip-v2"), ("torchserve", "torchserve"))
    ]


async def test_demo_input_is_what_the_model_receives(client: httpx.AsyncClient) -> None:
    r = await client.put("/demo/input/mnist", content=gray_png(200, size=(56, 40), mode="RGB"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-input-shape"] == "1,1,28,28" and r.headers["x-model-version"] == "1"
    image = Image.open(io.BytesIO(r.content))
    assert image.size == (28, 28) and image.mode == "L"
    assert np.all(np.asarray(image) == 200)  # gray, resized, normalised, and mapped back to 8 bits
    r = await client.post("/demo/input/mnist/1", content=b"hello")
    assert r.status_code == 415 and "request body is not an image" in r.json()["message"]
    r = await client.post("/demo/input/fashion", content=digit_png(1))
    assert r.status_code == 404 and "not routed" in r.json()["message"]
