"""The registry a follower process mirrors from the primary (registry_sync), both apps in one event loop
over fake backends: register, set-default, scale to zero and unregister on the primary are served
the same way by the follower once the management call has answered."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.gateway.fakes import FakeAdmin, FakeBackend, asgi_client, digit_png, routing, write_store
from triserve_gateway.app import create_app
from triserve_gateway.process import ProcessRole
from triserve_gateway.registry_sync import SNAPSHOT
from triserve_gateway.settings import GatewaySettings

KEY = "sync-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _app(settings: GatewaySettings, role: ProcessRole, backends: dict[str, FakeBackend],
         admins: dict[str, FakeAdmin]) -> FastAPI:
    return create_app(
        settings, routing=routing(strategy="p2c"), role=role,
        clients=lambda _: backends,  # type: ignore[arg-type,return-value]
        admins=lambda _: admins,  # type: ignore[arg-type,return-value]
    )


@asynccontextmanager
async def pair(tmp_path: Path, backends: dict[str, FakeBackend]) -> AsyncIterator[dict[str, Any]]:
    """A primary and a follower (one run directory), their inference clients and the primary's management."""
    (tmp_path / "run" / "registry").mkdir(parents=True)
    settings = GatewaySettings(
        model_store=write_store(tmp_path / "store", versions=("1", "2")), load_models="mnist:1",
        management_key=KEY, management_key_file=tmp_path / "key",
    )
    admins = {n: FakeAdmin(n, {("mnist", "1"): 1}) for n in ("onnx", "paddle", "torchserve")}
    # the follower's "primary" is this test's parent, so that it does not stop itself
    roles = [ProcessRole(i, 2, tmp_path / "run", None, os.getppid()) for i in (0, 1)]
    primary, follower = (_app(settings, role, backends, admins) for role in roles)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(primary.router.lifespan_context(primary))
        await stack.enter_async_context(follower.router.lifespan_context(follower))
        yield {
            "primary": await stack.enter_async_context(asgi_client(primary)),
            "follower": await stack.enter_async_context(asgi_client(follower)),
            "management": await stack.enter_async_context(asgi_client(primary.state.management_app, "http://m")),
            "run": tmp_path / "run",
            "follower_app": follower,
        }


async def predict(client: httpx.AsyncClient, version: str | None = None) -> httpx.Response:
    return await client.put("/predictions/mnist" + (f"/{version}" if version else ""), content=digit_png(3))


async def test_the_follower_serves_what_the_primary_routes(
    tmp_path: Path, backends: dict[str, FakeBackend]
) -> None:
    async with pair(tmp_path, backends) as p:
        mgmt, follower = p["management"], p["follower"]
        assert (await predict(follower)).status_code == 200  # the start set, from the first snapshot
        assert (await predict(follower, "2")).status_code == 404
        r = await mgmt.post("/models", params={"url": "mnist/2", "synchronous": "true"}, headers=AUTH)
        assert r.status_code == 200, r.text
        # synchronous: answered once the follower acknowledged, so it serves version 2 already
        assert (await predict(follower, "2")).headers["x-model-version"] == "2"
        assert (await predict(follower)).headers["x-model-version"] == "1"
        assert (await mgmt.put("/models/mnist/2/set-default", headers=AUTH)).status_code == 200
        assert (await predict(follower)).headers["x-model-version"] == "2"
        assert (await mgmt.put("/models/mnist/1/set-default", headers=AUTH)).status_code == 200
        r = await mgmt.put("/models/mnist/2", params={"min_worker": "0", "synchronous": "true"}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert (await predict(follower, "2")).status_code == 503  # registered, held by no backend
        assert (await mgmt.delete("/models/mnist/2", headers=AUTH)).status_code == 200
        assert (await predict(follower, "2")).status_code == 404
        state = json.loads((p["run"] / "registry" / SNAPSHOT).read_text())
        acked = int((p["run"] / "registry" / "ack-1").read_text())
        assert acked == state["generation"]
        assert list(state["state"]["models"]["mnist"]["versions"]) == ["1"]


async def test_unregistering_the_last_version_removes_the_follower_s_route(
    tmp_path: Path, backends: dict[str, FakeBackend]
) -> None:
    async with pair(tmp_path, backends) as p:
        assert (await p["management"].delete("/models/mnist/1", headers=AUTH)).status_code == 200
        r = await predict(p["follower"])
        assert r.status_code == 404
        assert not p["follower_app"].state.gateway.is_routed("mnist")


@pytest.mark.parametrize("settling", [True, False])
async def test_follower_readiness_follows_the_primary_s_start_set(
    tmp_path: Path, backends: dict[str, FakeBackend], settling: bool
) -> None:
    async with pair(tmp_path, backends) as p:
        follower_app = p["follower_app"]
        follow = follower_app.state.manager.follower
        state = json.loads((p["run"] / "registry" / SNAPSHOT).read_text())["state"]
        follow.apply({**state, "settling": settling})
        ping = await p["follower"].get("/ping")
        assert (ping.status_code == 200) is not settling
