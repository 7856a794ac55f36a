"""The runtime services' model repository: several models and versions, load/unload at run time,
unload after the requests in flight, and the v2 repository extension routes (fake runtimes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.common.runtime_fakes import FakeRuntime
from tests.gateway.fakes import make_manifest
from tests.support.wait import eventually
from triserve_common import codec
from triserve_common.errors import BadRequestError, ModelNotFoundError, TriserveError
from triserve_common.repository import ALL, ModelRepository, parse_model_list
from triserve_common.rest import build_app
from triserve_common.runtime import Runtime
from triserve_common.settings import ServiceSettings


def write_store(root: Path, versions: dict[str, list[str]]) -> Path:
    """Manifests (artifact ``onnx``) for each model → versions; no artifact files (the runtimes are fakes)."""
    for name, vs in versions.items():
        for v in vs:
            d = root / name / v
            d.mkdir(parents=True)
            (d / "manifest.json").write_text(make_manifest(name=name, version=v).model_dump_json())
    return root


class Factory:
    """Builds FakeRuntimes and remembers them; ``fail`` makes the next build raise."""

    def __init__(self) -> None:
        self.built: list[FakeRuntime] = []
        self.fail: Exception | None = None

    def __call__(self, name: str, version: str, instances: int | None) -> Runtime:
        if self.fail is not None:
            raise self.fail
        runtime = FakeRuntime(name=name, version=version, instances=instances or 1)
        self.built.append(runtime)
        return runtime


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def repo(tmp_path: Path, factory: Factory) -> ModelRepository:
    store = write_store(tmp_path, {"mnist": ["1", "2", "10"], "fashion": ["1"]})
    return ModelRepository(store, "onnx", factory, drain_timeout_s=30.0)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("all", ALL),
        ("ALL", ALL),
        ("none", []),
        ("", []),
        (None, []),
        ("mnist", [("mnist", None)]),
        ("mnist,fashion:1", [("mnist", None), ("fashion", "1")]),
    ],
)
def test_model_lists(text: str | None, parsed: object) -> None:
    assert parse_model_list(text) == parsed


def test_model_list_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match="empty model name"):
        parse_model_list("mnist,:2")


def test_start_set_all_and_the_highest_version_by_default(repo: ModelRepository) -> None:
    repo.load_startup(ALL)
    assert [(s.name, s.version) for s in repo.loaded()] == [
        ("fashion", "1"),
        ("mnist", "1"),
        ("mnist", "2"),
        ("mnist", "10"),
    ]
    assert repo.get("mnist").version == "10"  # numeric order, not text order
    assert repo.get("mnist", "2").version == "2"
    with pytest.raises(ModelNotFoundError, match="versions loaded: 1, 2, 10"):
        repo.get("mnist", "3")
    with pytest.raises(ModelNotFoundError, match="models loaded: fashion, mnist"):
        repo.get("cifar")


def test_start_set_list_loads_every_version_of_a_named_model(repo: ModelRepository) -> None:
    repo.load_startup([("mnist", None), ("fashion", "1")])
    assert sorted((s.name, s.version) for s in repo.loaded()) == [
        ("fashion", "1"),
        ("mnist", "1"),
        ("mnist", "10"),
        ("mnist", "2"),
    ]


def test_index_lists_the_store_with_states(repo: ModelRepository) -> None:
    repo.load_sync("mnist", "2", instances=3)
    index = {(r["name"], r["version"]): r for r in repo.index()}
    assert set(index) == {("fashion", "1"), ("mnist", "1"), ("mnist", "2"), ("mnist", "10")}
    assert index[("mnist", "2")]["state"] == "READY" and index[("mnist", "2")]["instances"] == 3
    assert index[("mnist", "1")] == {
        "name": "mnist",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }
    assert [(r["name"], r["version"]) for r in repo.index(ready_only=True)] == [("mnist", "2")]


async def test_load_resolves_versions_and_refuses_unknown_ones(repo: ModelRepository) -> None:
    served = await repo.load("mnist")
    assert served.version == "10"
    with pytest.raises(
        ModelNotFoundError, match=r"version '7' of model 'mnist' not found \(versions: 1, 2, 10\)"
    ):
        await repo.load("mnist", "7")
    with pytest.raises(ModelNotFoundError, match="no 'onnx' artifact"):
        await repo.load("cifar")
    with pytest.raises(BadRequestError, match="instance_count"):
        await repo.load("mnist", "1", instances=0)


async def test_a_failed_load_is_unavailable_with_its_reason(repo: ModelRepository, factory: Factory) -> None:
    factory.fail = RuntimeError("engine exploded")
    with pytest.raises(
        TriserveError, match="failed to load 'mnist' version 1: RuntimeError: engine exploded"
    ):
        await repo.load("mnist", "1")
    row = next(r for r in repo.index() if r["version"] == "1" and r["name"] == "mnist")
    assert row["state"] == "UNAVAILABLE" and "engine exploded" in row["reason"]
    assert repo.loaded() == []


async def test_reload_swaps_in_the_new_instance_count_and_drains_the_old(
    repo: ModelRepository, factory: Factory
) -> None:
    first = await repo.load("mnist", "1", instances=1)
    with repo.use("mnist", "1"):  # a request in flight on the old one
        reload = asyncio.create_task(repo.load("mnist", "1", instances=4))
        await eventually(lambda: repo.get("mnist", "1") is not first, "the new version serves")
        assert repo.get("mnist", "1").instances == 4
        assert not first.runtime.unloaded and not reload.done()  # the old one waits for its request
    await reload
    assert isinstance(first.runtime, FakeRuntime) and first.runtime.unloaded


async def test_unload_stops_routing_at_once_and_releases_after_requests_in_flight(
    repo: ModelRepository,
) -> None:
    served = await repo.load("mnist", "2")
    await repo.load("mnist", "10")
    with repo.use("mnist", "2"):
        task = asyncio.create_task(repo.unload("mnist", "2"))
        await eventually(lambda: [s.version for s in repo.loaded()] == ["10"], "version 2 out of routing")
        with pytest.raises(ModelNotFoundError):
            repo.get("mnist", "2")
        assert not task.done()
        state = {r["version"]: r["state"] for r in repo.index()}
        assert state["2"] == "UNLOADING"
    assert await task == ["2"]
    assert isinstance(served.runtime, FakeRuntime) and served.runtime.unloaded
    assert await repo.unload("mnist") == ["10"] and repo.loaded() == []


# ------------------------------------------------------------------ HTTP routes


@pytest.fixture
async def client(repo: ModelRepository) -> AsyncIterator[httpx.AsyncClient]:
    repo.load_sync("mnist", "1")
    app = build_app(ServiceSettings(), repo, server_name="test", server_version="0")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            yield c


def infer_body() -> tuple[bytes, dict[str, str]]:
    return codec.encode_request({"input": np.ones((2, 1, 28, 28), np.float32)}, outputs=["logits"])


async def test_routes_load_infer_and_unload(client: httpx.AsyncClient) -> None:
    index = (await client.post("/v2/repository/index")).json()
    assert {"name": "mnist", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    r = await client.post(
        "/v2/repository/models/mnist/load", json={"parameters": {"version": 2, "instance_count": 2}}
    )
    assert r.status_code == 200 and r.content == b""
    body, headers = infer_body()
    r = await client.post("/v2/models/mnist/infer", content=body, headers=headers)  # the highest loaded
    assert (
        r.status_code == 200
        and json.loads(r.content[: int(r.headers[codec.HEADER_LENGTH])])["model_version"] == "2"
    )
    meta = (await client.get("/v2/models/mnist")).json()
    assert meta["versions"] == ["1", "2"] and meta["parameters"]["version"] == "2"
    r = await client.post("/v2/repository/models/mnist/unload", json={"parameters": {"version": "2"}})
    assert r.status_code == 200
    assert [
        row["version"] for row in (await client.post("/v2/repository/index", json={"ready": True})).json()
    ] == ["1"]
    assert (await client.post("/v2/repository/models/mnist/unload")).status_code == 200
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}  # serving, nothing loaded
    assert (await client.post("/v2/models/mnist/infer", content=body, headers=headers)).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v2/repository/models/cifar/load", b"", 404, "cifar"),
        ("/v2/repository/models/mnist/load", b"{", 400, "invalid repository request"),
        ("/v2/repository/models/mnist/load", b'{"parameters": {"config": "{}"}}', 400, "parameters.config"),
        (
            "/v2/repository/models/mnist/load",
            b'{"parameters": {"instance_count": -1}}',
            400,
            "instance_count",
        ),
        ("/v2/repository/models/mnist/unload", b'{"parameters": {"version": "9"}}', 404, "version '9'"),
        ("/v2/repository/models/cifar/unload", b"", 404, "cifar"),
        ("/v2/repository/index", b'{"ready": "yes please"}', 400, "ready"),
        ("/v2/repository/index", b"x" * 70_000, 413, "exceeds the limit"),
    ],
)
async def test_route_errors_name_what_is_wrong(
    client: httpx.AsyncClient, path: str, body: bytes, status: int, fragment: str
) -> None:
    r = await client.post(path, content=body)
    assert r.status_code == status and fragment in r.json()["error"], r.text


def test_a_version_whose_manifest_lists_other_backends_is_not_served(
    tmp_path: Path, factory: Factory
) -> None:
    """An INT8 version lists the runtimes that serve it: a service not listed never loads it, and a
    request for it is a 404 saying why; the start set skips it instead of failing."""
    store = write_store(tmp_path, {"mnist": ["1", "2"]})
    int8 = make_manifest(name="mnist", version="2").model_copy(update={"backends": ["torchserve"]})
    (store / "mnist" / "2" / "manifest.json").write_text(int8.model_dump_json())
    repo = ModelRepository(store, "onnx", factory)
    assert repo.store_versions("mnist") == ["1"]
    repo.load_startup(ALL)
    repo.load_startup([("mnist", "2")])  # named explicitly: skipped, not an error
    assert [(s.name, s.version) for s in repo.loaded()] == [("mnist", "1")]
    with pytest.raises(ModelNotFoundError, match="does not serve it: the manifest of mnist version 2 lists"):
        repo.resolve("mnist", "2")
    assert [(r["version"], r["state"]) for r in repo.index()] == [("1", "READY")]
