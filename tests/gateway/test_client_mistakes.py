"""A client's mistake never counts against a backend, and every request stays within its budget.

In-process gateway over fake backends (pure logic); the same behaviours against the real
platform are in ``tests/hostile``.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.gateway.fakes import (
    SPEC,
    FakeBackend,
    asgi_client,
    catalog,
    digit_png,
    fakes,
    routing,
    running_app,
    write_store,
)
from tests.support.encode import image_bytes, v2_images, v2_request, v2_tensor
from triserve_common.errors import ModelNotFoundError
from triserve_common.metrics import new_registry
from triserve_gateway.circuit import CircuitState
from triserve_gateway.errors import BackendNotServingError, BackendRejectedError, BackendUnavailableError
from triserve_gateway.gateway import Gateway
from triserve_gateway.metrics import GatewayMetrics
from triserve_gateway.preprocess import ImagePreprocessor
from triserve_gateway.settings import GatewaySettings

PRE = ImagePreprocessor(SPEC)
NOT_FOUND = "Requested resource is not found, please refer to API document."  # TorchServe's words


def one(d: int) -> np.ndarray:
    return PRE(digit_png(d))


def make(backends: dict[str, FakeBackend]) -> Gateway:
    return Gateway(routing(strategy="round-robin"), catalog(("1", "2")), backends,  # type: ignore[arg-type]
                   GatewayMetrics(new_registry()), rng=random.Random(0))


async def test_backend_4xx_neither_opens_nor_closes_the_breaker() -> None:
    fb = fakes()
    gw = make(fb)
    breaker = gw.backends["onnx"].breaker
    fb["onnx"].fail_with = BackendUnavailableError("refused")
    await gw.infer(gw.resolve("mnist"), one(1), backend=None)  # onnx fails once, another answers
    assert breaker.consecutive_failures == 1
    fb["onnx"].fail_with = BackendRejectedError("bad tensor", status_code=400)
    for _ in range(5):
        with pytest.raises(BackendRejectedError):
            await gw.infer(gw.resolve("mnist"), one(1), backend="onnx")
    assert breaker.state is CircuitState.CLOSED
    assert breaker.consecutive_failures == 1  # not reset by the 4xx either
    fb["onnx"].fail_with = BackendUnavailableError("refused")
    with pytest.raises(BackendUnavailableError):
        await gw.infer(gw.resolve("mnist"), one(1), backend="onnx")
    assert breaker.state is CircuitState.OPEN  # threshold 2: the two real failures opened it
    await gw.close()


async def test_a_4xx_probe_leaves_the_breaker_half_open_and_frees_the_probe() -> None:
    fb = fakes()
    gw = make(fb)
    breaker = gw.backends["onnx"].breaker
    breaker.force_open()
    breaker.open_s = 0.0
    fb["onnx"].fail_with = BackendRejectedError("bad tensor", status_code=400)
    with pytest.raises(BackendRejectedError):
        await gw.infer(gw.resolve("mnist"), one(1), backend="onnx")
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.available()  # the next request may probe
    fb["onnx"].fail_with = None
    await gw.infer(gw.resolve("mnist"), one(1), backend="onnx")
    assert breaker.state is CircuitState.CLOSED
    await gw.close()


async def test_a_version_a_backend_does_not_serve_moves_on_without_counting() -> None:
    fb = fakes()
    gw = make(fb)
    fb["onnx"].fail_with = BackendNotServingError("version '2' not served", status_code=404)
    for d in range(6):
        res = await gw.infer(gw.resolve("mnist", "2"), one(d))
        assert res.backend != "onnx" and int(res.value.argmax()) == d
    assert gw.backends["onnx"].breaker.consecutive_failures == 0
    for f in fb.values():
        f.fail_with = BackendNotServingError("version '2' not served", status_code=404)
    with pytest.raises(BackendNotServingError) as info:
        await gw.infer(gw.resolve("mnist", "2"), one(1))
    assert info.value.status_code == 404
    assert all(s.breaker.state is CircuitState.CLOSED for s in gw.backends.values())
    await gw.close()


def test_versions_are_resolved_at_the_gateway_and_latest_is_no_alias() -> None:
    cat = catalog(("1", "2"))
    assert cat.get("mnist").version == "2"
    with pytest.raises(ModelNotFoundError, match=r"version 'latest' .* \(versions: 1, 2; omit the version"):
        cat.get("mnist", "latest")
    with pytest.raises(ModelNotFoundError, match=r"version '9' of model 'mnist' not found \(versions: 1, 2"):
        cat.get("mnist", "9")
    with pytest.raises(ModelNotFoundError, match=r"\.\.\. \(300 characters\)"):
        cat.get("x" * 300)


# ------------------------------------------------------------------ over HTTP


@pytest.fixture
async def client(tmp_path: Path, backends: dict[str, FakeBackend]) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        model_store=write_store(tmp_path), max_rows_per_request=8, max_images_per_request=4,
        max_image_pixels=250_000, max_request_pixels=400_000, inline_decode_max_pixels=10_000,
        image_formats=["PNG", "GIF"],
    )
    async with running_app(settings, backends) as app, asgi_client(app) as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


async def test_three_latest_requests_then_a_normal_one(
    client: httpx.AsyncClient, backends: dict[str, FakeBackend]
) -> None:
    for _ in range(3):
        r = await client.put("/predictions/mnist/latest", content=digit_png(3))
        assert r.status_code == 404 and "versions: 1" in r.json()["message"]
    assert not any(f.calls for f in backends.values())  # refused before routing
    r = await client.put("/predictions/mnist", content=digit_png(3))
    assert r.status_code == 200 and r.text == "3"
    gateway = client.app.state.gateway  # type: ignore[attr-defined]
    assert all(s.breaker.state is CircuitState.CLOSED for s in gateway.backends.values())


def png(size: tuple[int, int], value: int = 0) -> bytes:
    return image_bytes(Image.new("L", size, value), "PNG")


def parts(n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("data", (f"{i}.png", digit_png(i % 10), "image/png")) for i in range(n)]


@pytest.mark.parametrize(
    ("kwargs", "status", "needles"),
    [
        ({"files": parts(5)}, 413, ["more than 4 parts", "TRISERVE_GATEWAY_MAX_IMAGES_PER_REQUEST"]),
        ({"content": png((600, 600))}, 413, ["360000 pixels", "TRISERVE_GATEWAY_MAX_IMAGE_PIXELS"]),
        ({"files": [("d", (f"{i}.png", png((400, 400)), "image/png")) for i in range(3)]}, 413,
         ["480000, over the limit of 400000", "TRISERVE_GATEWAY_MAX_REQUEST_PIXELS"]),
        ({"content": image_bytes(Image.new("L", (8, 8)), "BMP")}, 415,
         ["accepted: PNG, GIF", "TRISERVE_GATEWAY_IMAGE_FORMATS"]),
    ],
)
async def test_image_budgets_are_413_or_415_naming_the_setting(
    client: httpx.AsyncClient, backends: dict[str, FakeBackend], kwargs: dict[str, object], status: int,
    needles: list[str],
) -> None:
    r = await client.post("/predictions/mnist", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    for needle in needles:
        assert needle in r.json()["message"]
    assert not any(f.calls for f in backends.values())


async def test_rows_and_bytes_images_are_capped_the_same_for_every_backend(client: httpx.AsyncClient) -> None:
    x = np.zeros((9, 1, 28, 28), np.float32)
    req = v2_request(v2_tensor("input", x))
    for backend in ("onnx", "paddle", "torchserve"):
        r = await client.post("/v2/models/mnist/infer", json=req, headers={"X-Backend": backend})
        assert r.status_code == 413 and "TRISERVE_GATEWAY_MAX_ROWS_PER_REQUEST" in r.json()["error"]
    req = v2_request(v2_images("image", [digit_png(1)] * 5))
    r = await client.post("/v2/models/mnist/infer", json=req)
    assert r.status_code == 413 and "TRISERVE_GATEWAY_MAX_IMAGES_PER_REQUEST" in r.json()["error"]


async def test_animated_gif_is_read_by_its_first_frame(client: httpx.AsyncClient) -> None:
    frames = [Image.open(io.BytesIO(digit_png(7))).convert("L")]
    frames += [Image.new("L", (28, 28), 255 - (i % 50)) for i in range(1000)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=1)
    r = await client.post("/predictions/mnist", content=buf.getvalue())
    assert r.status_code == 200 and r.text == "7"


async def test_fp32_json_is_strict_and_nonfinite_outputs_are_422(
    client: httpx.AsyncClient, backends: dict[str, FakeBackend]
) -> None:
    body = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,784],"data":[NaN' + b",0" * 783 + b"]}]}"
    r = await client.post("/v2/models/mnist/infer", content=body)
    assert r.status_code == 400 and "'NaN' is not a JSON value" in r.json()["error"]
    data: list[object] = [0.0] * 784
    data[5] = "0.5"
    req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": data}]}
    r = await client.post("/v2/models/mnist/infer", content=json.dumps(req))
    assert r.status_code == 400 and "element 5 is the string '0.5'" in r.json()["error"]
    assert not any(f.calls for f in backends.values())
    for f in backends.values():
        f.fail_with = None
    backends["onnx"].infer = _nan_infer  # type: ignore[method-assign]
    r = await client.put("/predictions/mnist?topk=3", content=digit_png(2), headers={"X-Backend": "onnx"})
    assert r.status_code == 422 and "not finite" in r.json()["message"]
    assert client.app.state.gateway.backends["onnx"].breaker.state is CircuitState.CLOSED  # type: ignore[attr-defined]


async def _nan_infer(*args: object, **kwargs: object) -> np.ndarray:
    return np.full((1, 10), np.nan, np.float32)


@pytest.mark.parametrize(
    ("path", "method", "status", "body"),
    [
        ("/predictions/cifar", "PUT", 404, {"code": 404, "type": "ModelNotFoundException"}),
        ("/nowhere", "GET", 404, {"code": 404, "type": "ResourceNotFoundException", "message": NOT_FOUND}),
        ("/ping", "DELETE", 405, {"code": 405, "type": "MethodNotAllowedException"}),
        ("/predictions/mnist?topk=x", "PUT", 400, {"code": 400, "type": "BadRequestException"}),
    ],
)
async def test_torchserve_api_errors_have_torchserve_shape(
    client: httpx.AsyncClient, path: str, method: str, status: int, body: dict[str, object]
) -> None:
    r = await client.request(method, path, content=digit_png(1))
    assert r.status_code == status
    got = r.json()
    assert set(got) == {"code", "type", "message"} and got["message"]
    assert {k: got[k] for k in body} == body


async def test_v2_errors_stay_v2(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/models/cifar")
    assert r.status_code == 404 and set(r.json()) == {"error"} and "cifar" in r.json()["error"]
    r = await client.get("/v2/nowhere")
    assert r.status_code == 404 and set(r.json()) == {"error"}
