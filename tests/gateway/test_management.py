"""The gateway's management listener over fake backends: registration across backends, placement,
draining on unregister, scaling, defaults, reconciliation at start, and the API keys."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.gateway.fakes import (
    FakeAdmin,
    FakeBackend,
    asgi_client,
    digit_png,
    fakes,
    routing,
    running_app,
    write_store,
)
from tests.support.wait import eventually
from triserve_gateway.app import create_app
from triserve_gateway.settings import GatewaySettings

KEY = "unit-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Gw:
    """A gateway app in its lifespan, with clients on its inference and management listeners."""

    def __init__(self, app: FastAPI, inference: httpx.AsyncClient, management: httpx.AsyncClient) -> None:
        self.app, self.inference, self.management = app, inference, management

    async def mgmt(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**AUTH, **kw.pop("headers", {})}
        return await self.management.request(method, path, headers=headers, **kw)

    async def predict(self, version: str | None = None, **headers: str) -> httpx.Response:
        path = "/predictions/mnist" + (f"/{version}" if version else "")
        return await self.inference.put(path, content=digit_png(4), headers=headers)


Launch = Callable[..., AbstractAsyncContextManager[Gw]]


@pytest.fixture
def admins() -> dict[str, FakeAdmin]:
    return {n: FakeAdmin(n) for n in ("onnx", "paddle", "torchserve")}


@pytest.fixture
def launch(tmp_path: Path, backends: dict[str, FakeBackend], admins: dict[str, FakeAdmin]) -> Launch:
    store = write_store(tmp_path / "store", versions=("1", "2"))

    @asynccontextmanager
    async def run(**settings: Any) -> AsyncIterator[Gw]:
        values: dict[str, Any] = {
            "model_store": store,
            "load_models": "none",
            "management_key": KEY,
            "management_key_file": tmp_path / "key",
            **settings,
        }
        async with (
            running_app(GatewaySettings(**values), backends, admins=admins) as app,
            asgi_client(app) as inference,
            asgi_client(app.state.management_app, "http://mgmt") as mgmt,
        ):
            yield Gw(app, inference, mgmt)

    return run


async def test_start_set_is_reconciled_with_what_each_backend_holds(
    launch: Launch, admins: dict[str, FakeAdmin]
) -> None:
    admins["onnx"].holding[("mnist", "1")] = 1
    admins["torchserve"].holding[("mnist", "1")] = 1
    async with launch(load_models="mnist:1") as gw:
        await eventually(lambda: ("mnist", "1") in admins["paddle"].holding, "paddle loads what it lacked")
        assert admins["paddle"].calls == [("load", "mnist", "1", 1)]
        assert not admins["onnx"].calls and not admins["torchserve"].calls  # held already: left alone
        (entry,) = (await gw.mgmt("GET", "/models/mnist")).json()
        assert entry["loadedAtStartup"] is True and len(entry["workers"]) == 3
        assert (await gw.predict()).status_code == 200


async def test_register_routes_only_to_the_backends_that_loaded_it(
    launch: Launch, admins: dict[str, FakeAdmin], backends: dict[str, FakeBackend]
) -> None:
    admins["paddle"].refuse = "out of memory"
    async with launch() as gw:
        r = await gw.mgmt("POST", "/models", params={"url": "mnist/2", "initial_workers": 2})
        assert r.status_code == 200 and r.json() == {
            "status": 'Model "mnist" Version: 2 registered with 2 initial workers'
        }
        (entry,) = (await gw.mgmt("GET", "/models/mnist/2")).json()
        by_name = {b["name"]: b for b in entry["triserve"]["backends"]}
        assert by_name["paddle"]["state"] == "FAILED" and "out of memory" in by_name["paddle"]["last_error"]
        assert by_name["onnx"]["state"] == "READY" and by_name["onnx"]["url"] == "http://127.0.0.1:1"
        assert len(entry["workers"]) == 4  # 2 on onnx, 2 on torchserve
        forced = await gw.predict(**{"X-Backend": "paddle"})  # could serve it, does not hold it: 503, why
        error = forced.json()["message"]
        assert forced.status_code == 503 and "choose from: onnx, torchserve" in error
        assert "does not hold model 'mnist' version 2 now: it failed to load it" in error
        assert "out of memory" in error
        for _ in range(6):
            r = await gw.predict()
            assert r.status_code == 200 and r.headers["x-backend"] in ("onnx", "torchserve")
        assert not backends["paddle"].calls and set(backends["onnx"].versions) == {"2"}


async def test_register_failing_everywhere_is_500_and_leaves_nothing(
    launch: Launch, admins: dict[str, FakeAdmin]
) -> None:
    for admin in admins.values():
        admin.refuse = "disk full"
    async with launch() as gw:
        r = await gw.mgmt("POST", "/models", params={"url": "mnist.mar"})
        assert r.status_code == 500 and r.json()["type"] == "InternalServerException"
        assert "Failed to start workers for model mnist version: 2" in r.json()["message"]
        assert (await gw.mgmt("GET", "/models")).json() == {"models": []}
        assert (await gw.predict()).status_code == 404


async def test_unregister_waits_for_the_requests_in_flight(
    launch: Launch, admins: dict[str, FakeAdmin], backends: dict[str, FakeBackend]
) -> None:
    async with launch(batching=False) as gw:
        assert (await gw.mgmt("POST", "/models", params={"url": "mnist/1"})).status_code == 200
        backends["onnx"].gate = asyncio.Event()
        request = asyncio.create_task(gw.predict(**{"X-Backend": "onnx"}))
        catalog = gw.app.state.gateway.catalog
        await eventually(lambda: catalog.inflight("mnist", "1") == 1, "the request is in flight")
        delete = asyncio.create_task(gw.mgmt("DELETE", "/models/mnist"))
        await eventually(lambda: catalog.versions("mnist") == [], "the version leaves routing at once")
        assert (await gw.predict()).status_code == 404
        assert not delete.done() and not any(c[0] == "unload" for a in admins.values() for c in a.calls)
        backends["onnx"].gate.set()
        assert (await request).status_code == 200
        r = await delete
        assert r.status_code == 200 and r.json() == {"status": 'Model "mnist" unregistered'}
        assert all(("unload", "mnist", "1", 0) in a.calls for a in admins.values())


async def test_scale_asynchronously_then_to_zero_and_back(
    launch: Launch, admins: dict[str, FakeAdmin]
) -> None:
    async with launch(load_models="mnist:1") as gw:
        await eventually(
            lambda: all(("mnist", "1") in a.holding for a in admins.values()), "start set loaded"
        )
        r = await gw.mgmt("PUT", "/models/mnist", params={"min_worker": 3, "max_worker": 4})
        assert r.status_code == 202 and r.json() == {"status": "Processing worker updates..."}
        await eventually(
            lambda: all(a.holding.get(("mnist", "1")) == 3 for a in admins.values()), "scaled to 3"
        )
        (entry,) = (await gw.mgmt("GET", "/models/mnist")).json()
        assert (entry["minWorkers"], entry["maxWorkers"], len(entry["workers"])) == (3, 4, 9)
        r = await gw.mgmt("PUT", "/models/mnist/1", params={"min_worker": 0, "synchronous": "true"})
        assert r.status_code == 200 and r.json() == {
            "status": "Workers scaled to 0 for model: mnist, version: 1"
        }
        assert (await gw.predict()).status_code == 503
        assert (await gw.mgmt("GET", "/models/mnist")).json()[0]["workers"] == []
        r = await gw.mgmt("PUT", "/models/mnist", params={"min_worker": 1, "synchronous": "TRUE"})
        assert r.status_code == 200 and (await gw.predict()).status_code == 200


async def test_default_version_is_the_first_registered_until_set(launch: Launch) -> None:
    async with launch() as gw:
        for url in ("mnist/2", "mnist/1"):
            assert (await gw.mgmt("POST", "/models", params={"url": url})).status_code == 200
        assert (await gw.predict()).headers["x-model-version"] == "2"
        r = await gw.mgmt("PUT", "/models/mnist/1/set-default")
        assert r.json() == {"status": 'Default version successfully updated for model "mnist" to "1"'}
        assert (await gw.predict()).headers["x-model-version"] == "1"
        assert (await gw.predict("2")).headers["x-model-version"] == "2"
        listed = (await gw.mgmt("GET", "/models")).json()
        assert listed == {"models": [{"modelName": "mnist", "modelUrl": "mnist/1"}]}


async def test_register_json_body_as_torchserve_accepts(launch: Launch) -> None:
    async with launch() as gw:
        r = await gw.mgmt(
            "POST", "/models", json={"url": "mnist/1", "initial_workers": 2, "synchronous": True}
        )
        assert r.status_code == 200 and "registered with 2 initial workers" in r.json()["status"]
        r = await gw.mgmt(
            "POST", "/models", content=b"[1]", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["type"] == "BadRequestException"
        r = await gw.mgmt("POST", "/models", params={"url": "mnist/2", "handler": "x:handle"})
        assert r.status_code == 400 and r.json()["message"].startswith("parameter handler is not supported")


# ------------------------------------------------------------------ keys


async def test_generated_management_key_is_private_and_never_logged(
    launch: Launch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "keys" / "management.key"
    with caplog.at_level(logging.INFO):
        async with launch(management_key=None, management_key_file=key_file) as gw:
            key = key_file.read_text().strip()
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key) >= 32
            assert str(key_file) in caplog.text and key not in caplog.text
            assert (await gw.management.get("/models")).status_code == 401
            ok = await gw.management.get("/models", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
    async with launch(management_key=None, management_key_file=key_file) as gw:  # the next start reads it
        assert (
            await gw.management.get("/models", headers={"Authorization": f"Bearer {key}"})
        ).status_code == 200


async def test_inference_key_when_configured(launch: Launch, tmp_path: Path) -> None:
    key_file = tmp_path / "inference.key"
    key_file.write_text("inf-key\n")
    async with launch(load_models="mnist:1", inference_key_file=key_file) as gw:
        await eventually(lambda: gw.app.state.gateway.ready(), "mnist loaded on its backends")
        r = await gw.predict()
        assert r.status_code == 401 and r.json()["type"] == "InvalidKeyException"
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await gw.inference.post("/v2/models/mnist/infer", json={"inputs": []})
        assert r.status_code == 401 and "Token Authorization failed" in r.json()["error"]
        for probe in ("/ping", "/v2/health/live", "/v2/health/ready"):
            assert (await gw.inference.get(probe)).status_code == 200, probe
        assert (await gw.predict(Authorization="Bearer inf-key")).status_code == 200
        assert (await gw.predict(Authorization=f"Bearer {KEY}")).status_code == 401  # keys are per listener


async def test_disable_token_auth_opens_management_with_a_warning(
    launch: Launch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with launch(management_key=None, disable_token_auth=True) as gw:
            assert (await gw.management.get("/models")).status_code == 200
    assert "token authorization is DISABLED" in caplog.text


async def test_missing_inference_key_file_stops_the_start(tmp_path: Path) -> None:
    from triserve_common.errors import TriserveError

    settings = GatewaySettings(
        model_store=write_store(tmp_path),
        load_models="none",
        management_key=KEY,
        inference_key_file=tmp_path / "absent.key",
    )
    with pytest.raises(TriserveError, match=r"absent\.key does not exist"):
        create_app(settings, routing=routing(), clients=lambda _: fakes())  # type: ignore[arg-type,return-value]


def test_listeners_need_three_ports() -> None:
    with pytest.raises(ValueError, match="need different ports"):
        GatewaySettings(port=9000, management_port=9000)
