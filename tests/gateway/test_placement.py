"""Which backends serve which version, from what they report (fake backends and admins): a version
goes only where it is held and the manifest allows; forcing a backend that lacks it says why; a
backend's 404 fails over without tripping its breaker; the default version; per-version metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.gateway.fakes import (
    FakeAdmin,
    FakeBackend,
    asgi_client,
    digit_png,
    make_manifest,
    routing,
    running_app,
)
from tests.support.wait import eventually
from triserve_common.manifest import Artifact
from triserve_gateway.circuit import CircuitState
from triserve_gateway.config import RoutingConfig
from triserve_gateway.errors import BackendNotServingError
from triserve_gateway.gateway import Gateway
from triserve_gateway.settings import GatewaySettings

BACKENDS = ("onnx", "paddle", "torchserve")


def int8_store(root: Path) -> Path:
    """mnist 1 (every runtime's artifact) and 2 (INT8: no Paddle artifact; lists onnx, torchserve)."""
    int8 = ["onnx", "torchserve"]
    for version, kinds, listed in (("1", BACKENDS, None), ("2", int8, int8)):
        d = root / "mnist" / version
        d.mkdir(parents=True)
        artifacts = {k: Artifact(format=k, files=[]) for k in kinds}
        update = {"artifacts": artifacts, "backends": listed}
        manifest = make_manifest(version=version).model_copy(update=update)
        (d / "manifest.json").write_text(manifest.model_dump_json())
    return root


def artifact_routing(default_version: str | None = None) -> RoutingConfig:
    """The fakes' routing, each backend running its own artifact kind (as routing.yaml says)."""
    raw = routing().model_dump()
    for name in BACKENDS:
        raw["backends"][name]["artifact"] = name
    raw["models"]["mnist"]["default_version"] = default_version
    return RoutingConfig.model_validate(raw)


class Gw:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    async def predict(self, path: str = "/predictions/mnist", **headers: str) -> httpx.Response:
        return await self.client.put(path, content=digit_png(4), headers=headers)


Launch = Callable[..., AbstractAsyncContextManager[Gw]]


@pytest.fixture
def admins() -> dict[str, FakeAdmin]:
    """Each backend already holds what it can run (as after ``make up``)."""
    held = {"onnx": ("1", "2"), "paddle": ("1",), "torchserve": ("1", "2")}
    return {n: FakeAdmin(n, {("mnist", v): 1 for v in vs}) for n, vs in held.items()}


@pytest.fixture
def launch(tmp_path: Path, backends: dict[str, FakeBackend], admins: dict[str, FakeAdmin]) -> Launch:
    store = int8_store(tmp_path / "store")

    @asynccontextmanager
    async def run(default_version: str | None = None) -> AsyncIterator[Gw]:
        settings = GatewaySettings(model_store=store, load_models="all", management_key="k",
                                   management_key_file=tmp_path / "key")
        async with (
            running_app(settings, backends, artifact_routing(default_version), admins) as app,
            asgi_client(app) as client,
        ):
            yield Gw(app, client)

    return run


async def test_a_version_goes_only_to_the_backends_its_manifest_allows(
    launch: Launch, backends: dict[str, FakeBackend], admins: dict[str, FakeAdmin]
) -> None:
    async with launch() as gw:
        placed = gw.gateway.placement
        await eventually(lambda: placed.get(("mnist", "2")) == {"onnx", "torchserve"}, "reports")
        for _ in range(12):
            r = await gw.predict("/predictions/mnist/2")
            assert r.status_code == 200 and r.headers["x-model-version"] == "2", r.text
        assert "2" not in backends["paddle"].versions
        assert {"2"} <= set(backends["onnx"].versions) | set(backends["torchserve"].versions)
        assert not any(call[1:3] == ("mnist", "2") for call in admins["paddle"].calls)  # never asked to load
        forced = await gw.predict("/predictions/mnist/2", **{"X-Backend": "paddle"})
        error = forced.json()["message"]
        assert forced.status_code == 400, error
        assert "backend 'paddle' does not serve model 'mnist' version 2" in error
        assert "lists backends onnx, torchserve" in error and "choose from: onnx, torchserve" in error
        assert gw.gateway.backends["paddle"].breaker.state is CircuitState.CLOSED
        for version, serving in (("2", ["onnx", "torchserve"]), ("1", list(BACKENDS))):
            meta = (await gw.client.get(f"/v2/models/mnist/versions/{version}")).json()
            assert meta["parameters"]["backends"] == serving and meta["versions"] == ["1", "2"]
        # no version: the highest (no default_version set in this routing)
        r = await gw.predict(**{"X-Backend": "onnx"})
        assert r.headers["x-model-version"] == "2"


async def test_default_version_from_the_route(launch: Launch) -> None:
    async with launch(default_version="1") as gw:
        r = await gw.predict(**{"X-Backend": "paddle"})
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert (await gw.client.get("/v2/models/mnist")).json()["parameters"]["version"] == "1"
        unknown = await gw.predict("/predictions/mnist/7")
        assert unknown.status_code == 404 and "versions: 1, 2" in unknown.json()["message"]
        unknown = await gw.predict("/predictions/fashion")
        assert unknown.status_code == 404 and "models: mnist" in unknown.json()["message"]


async def test_placement_follows_what_backends_report(launch: Launch, admins: dict[str, FakeAdmin],
                                                      backends: dict[str, FakeBackend]) -> None:
    async with launch() as gw:
        gateway = gw.gateway
        await eventually(lambda: gateway.placement.get(("mnist", "1")) == set(BACKENDS), "reports")
        # onnx drops version 1 behind the gateway's back and cannot load it again
        admins["onnx"].refuse = "out of memory"
        admins["onnx"].holding.pop(("mnist", "1"))
        await eventually(lambda: "onnx" not in gateway.placement[("mnist", "1")], "onnx unplaced")
        forced = await gw.predict("/predictions/mnist/1", **{"X-Backend": "onnx"})
        assert forced.status_code == 503, forced.text
        assert "does not hold model 'mnist' version 1 now: it failed to load it" in forced.json()["message"]
        assert "out of memory" in forced.json()["message"]
        backends["onnx"].calls.clear()
        for _ in range(9):
            assert (await gw.predict("/predictions/mnist/1")).headers["x-backend"] != "onnx"
        assert not backends["onnx"].calls
        # TorchServe reports workers still starting: not routed there until one is ready
        admins["torchserve"].holding[("mnist", "1")] = 0
        await eventually(lambda: "torchserve" not in gateway.placement[("mnist", "1")], "torchserve loading")
        admins["torchserve"].holding[("mnist", "1")] = 1
        await eventually(lambda: "torchserve" in gateway.placement[("mnist", "1")], "torchserve ready")
        # onnx restarts (unhealthy, then healthy again): it is asked to load what it lacks
        admins["onnx"].refuse = None
        backends["onnx"].healthy = False
        await eventually(lambda: not gateway.backends["onnx"].healthy, "onnx down")
        backends["onnx"].healthy = True
        await eventually(lambda: "onnx" in gateway.placement[("mnist", "1")], "onnx reloaded and placed")
        assert ("mnist", "1") in admins["onnx"].holding


async def test_a_backend_answering_404_is_skipped_without_a_breaker_trip(
    launch: Launch, backends: dict[str, FakeBackend]
) -> None:
    async with launch() as gw:
        gateway = gw.gateway
        await eventually(lambda: gateway.placement.get(("mnist", "1")) == set(BACKENDS), "reports")
        backends["paddle"].fail_with = BackendNotServingError(
            "backend 'paddle' answered 404: version '1' of model 'mnist' not found", status_code=404
        )
        for _ in range(12):
            r = await gw.predict("/predictions/mnist/1")
            assert r.status_code == 200 and r.headers["x-backend"] in ("onnx", "torchserve"), r.text
        assert gateway.backends["paddle"].breaker.state is CircuitState.CLOSED
        assert gateway.backends["paddle"].breaker.consecutive_failures == 0
        failures = gw.app.state.registry.get_sample_value(
            "triserve_gateway_backend_failures_total", {"backend": "paddle", "reason": "not_serving"}
        )
        assert failures is not None and failures >= 1
        forced = await gw.predict("/predictions/mnist/1", **{"X-Backend": "paddle"})
        # 503 while it is off the version (naming the 404), or the backend's own 404 once re-placed
        assert forced.status_code in (503, 404) and "not found" in forced.json()["message"], forced.text
        assert gateway.backends["paddle"].breaker.state is CircuitState.CLOSED



async def test_not_ready_until_the_backends_have_loaded_the_start_set(
    launch: Launch, admins: dict[str, FakeAdmin]
) -> None:
    """At start a backend that lacks a start-set version loads it; the gateway is ready only after
    (``make up`` returns when every backend serves what it loads), and only routes it there after."""
    admins["torchserve"].holding.pop(("mnist", "2"))
    admins["torchserve"].delay = 0.3
    async with launch() as gw:
        gateway = gw.gateway
        assert not gateway.ready() and (await gw.client.get("/v2/health/ready")).status_code == 503
        assert "torchserve" not in gateway.placement[("mnist", "2")]
        forced = await gw.predict("/predictions/mnist/2", **{"X-Backend": "torchserve"})
        assert forced.status_code == 503 and "it is loading it" in forced.json()["message"], forced.text
        await eventually(gateway.ready, "start set loaded")
        assert ("load", "mnist", "2", 1) in admins["torchserve"].calls
        assert (await gw.client.get("/v2/health/ready")).status_code == 200
        r = await gw.predict("/predictions/mnist/2", **{"X-Backend": "torchserve"})
        assert r.status_code == 200 and r.headers["x-backend"] == "torchserve"


async def test_a_backend_failing_its_probe_while_loading_is_waited_for(
    launch: Launch, admins: dict[str, FakeAdmin], backends: dict[str, FakeBackend]
) -> None:
    """TorchServe answers its probe 500 while workers start: the gateway waits for it (it was up at
    the start), instead of declaring itself ready without it."""
    admins["torchserve"].holding[("mnist", "2")] = 0  # registered, no READY worker yet
    async with launch() as gw:
        gateway = gw.gateway
        backends["torchserve"].healthy = False
        await eventually(lambda: not gateway.backends["torchserve"].healthy, "torchserve probe fails")
        for _ in range(5):
            assert not gateway.ready()
            await gateway.check_health()
        admins["torchserve"].holding[("mnist", "2")] = 1
        backends["torchserve"].healthy = True
        await eventually(gateway.ready, "ready once torchserve holds what it loads")
        assert "torchserve" in gateway.placement[("mnist", "2")]
