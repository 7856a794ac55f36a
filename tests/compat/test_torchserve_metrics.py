"""TorchServe's frontend metric names on the gateway: what a TorchServe user's dashboards and alerts read.

Names and dimensions come from the metrics configuration TorchServe 0.12 itself ships and loads
(``ts/configs/metrics.yaml`` of the installed ``torchserve`` package); the counts from requests sent
through the gateway app over in-process fake backends. The series are read from the app's registry,
as every listener that exposes it serves them.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message, Receive, Scope, Send

from tests.gateway.fakes import FakeBackend, digit_png, fake_admins, fakes, routing, write_store
from triserve_common.metrics import new_registry
from triserve_gateway.app import create_app
from triserve_gateway.errors import BackendUnavailableError
from triserve_gateway.listeners import create_metrics_app
from triserve_gateway.response_hooks import ResponseHooks
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.torchserve_metrics import TorchServeMetrics, as_torchserve_writes

FRONTEND = ("Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",
            "ts_inference_latency_microseconds", "ts_queue_latency_microseconds")


def torchserve_frontend_metrics() -> dict[str, list[str]]:
    """TorchServe's own frontend counters: name -> dimensions, from its shipped metrics.yaml."""
    spec = importlib.util.find_spec("ts")
    assert spec is not None and spec.submodule_search_locations, "the torchserve package is not installed"
    config = Path(next(iter(spec.submodule_search_locations))) / "configs" / "metrics.yaml"
    counters = yaml.safe_load(config.read_text())["ts_metrics"]["counter"]
    return {c["name"]: list(c["dimensions"]) for c in counters}


def exposition(app: FastAPI) -> dict[str, Any]:
    """Family name -> family, as Prometheus parses the app registry's text exposition."""
    text = generate_latest(app.state.registry).decode()
    families = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            families.setdefault(sample.name, family)
    return families


def samples(app: FastAPI, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    family = exposition(app)[name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == name}


@pytest.fixture
def backends() -> dict[str, FakeBackend]:
    return fakes()


@pytest.fixture
async def app(tmp_path: Path, backends: dict[str, FakeBackend]) -> AsyncIterator[FastAPI]:
    # (a gateway with a management listener keeps its generated key in tmp_path, never in the checkout)
    settings = GatewaySettings.model_validate(
        {"model_store": write_store(tmp_path), "management_key_file": tmp_path / "management.key"}
    )
    app = create_app(settings, routing=routing(), clients=lambda _: backends,  # type: ignore[arg-type,return-value]
                     admins=lambda _: fake_admins())  # type: ignore[arg-type,return-value]
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c


def test_torchserve_0_12_declares_the_frontend_metrics_we_export() -> None:
    declared = torchserve_frontend_metrics()
    assert set(FRONTEND) <= set(declared), sorted(declared)


async def test_names_and_labels_are_torchserve_s(app: FastAPI, client: httpx.AsyncClient) -> None:
    assert (await client.put("/predictions/mnist", content=digit_png(1))).status_code == 200
    declared = torchserve_frontend_metrics()
    families = exposition(app)
    for name in FRONTEND:
        assert name in families, f"{name} is not exported"
        (sample,) = [s for s in families[name].samples if s.name == name]
        assert sorted(sample.labels) == sorted(declared[name]), name
        if "Level" in sample.labels:
            assert sample.labels == {"Level": "Host", "Hostname": socket.gethostname()}
        else:
            assert sample.labels["hostname"] == socket.gethostname()
    assert families["ts_inference_requests_total"].type == "counter"


async def test_counts_follow_what_the_gateway_served(
    app: FastAPI, client: httpx.AsyncClient, backends: dict[str, FakeBackend]
) -> None:
    ok = [await client.put("/predictions/mnist", content=digit_png(d)) for d in range(3)]
    ok.append(await client.post("/predictions/mnist/1", content=digit_png(4)))
    ok.append(await client.get("/ping"))
    assert {r.status_code for r in ok} == {200}
    client_errors = [
        await client.put("/predictions/nope", content=digit_png(1)),  # 404
        await client.put("/predictions/mnist", content=b"not an image"),  # 415
        await client.put("/predictions/mnist?topk=99", content=digit_png(1)),  # 400
    ]
    assert all(400 <= r.status_code < 500 for r in client_errors)
    for b in backends.values():
        b.fail_with = BackendUnavailableError("down")
    server_errors = [await client.put("/predictions/mnist", content=digit_png(1))]
    assert server_errors[0].status_code >= 500

    host = socket.gethostname()
    by_class = {name: samples(app, name)[(("Hostname", host), ("Level", "Host"))]
                for name in ("Requests2XX", "Requests4XX", "Requests5XX")}
    assert by_class == {"Requests2XX": len(ok), "Requests4XX": len(client_errors),
                        "Requests5XX": len(server_errors)}

    def key(version: str) -> tuple[tuple[str, str], ...]:
        return (("hostname", host), ("model_name", "mnist"), ("model_version", version))

    requests = samples(app, "ts_inference_requests_total")
    assert requests == {key("default"): 3, key("1"): 1}  # as TorchServe labels a request without version
    latency = samples(app, "ts_inference_latency_microseconds")
    queue = samples(app, "ts_queue_latency_microseconds")
    assert set(latency) == set(queue) == set(requests)
    for k in requests:
        assert latency[k] > 0 and 0 <= queue[k] <= latency[k]
    gateway_ok = sum(
        s.value for s in exposition(app)["triserve_gateway_requests_total"].samples
        if s.name == "triserve_gateway_requests_total" and s.labels["status"] == "200"
    )
    assert gateway_ok == sum(requests.values())  # the same successful inferences our own series count


async def test_response_hooks_count_any_app_s_responses_and_escaped_errors() -> None:
    """Around another listener's app (no shadows): every response by class; an exception = a 500."""
    registry = new_registry()
    metrics = TorchServeMetrics(registry, hostname="h")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status = int(scope["path"].strip("/"))
        if status == 500:
            raise RuntimeError("a bug")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    hooked = ResponseHooks(app, metrics)
    for status in (200, 201, 204, 302, 400, 404, 499, 503, 500):
        try:
            await hooked({"type": "http", "path": f"/{status}"}, receive, send)
        except RuntimeError:
            assert status == 500
    await hooked({"type": "lifespan", "path": "/200"}, receive, send)  # not HTTP: not counted
    expected = {"2XX": 4, "4XX": 3, "5XX": 2}
    registry_text = generate_latest(registry).decode()
    for cls, count in expected.items():
        assert f'Requests{cls}{{Hostname="h",Level="Host"}} {float(count)}' in registry_text



def parsed(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample as Prometheus reads it: name, labels (any order), value."""
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_listener_writes_torchserve_s_lines_as_torchserve_does() -> None:
    """Labels in TorchServe's order, each followed by a comma (what TorchServe's Postman collection
    matches); our own series untouched; the same samples as Prometheus parses them."""
    registry = new_registry()
    host = 'a"} b'  # a label value with a quote, a brace and a space: escaped, never split on
    metrics = TorchServeMetrics(registry, hostname=host)
    ours = Counter("triserve_x", "ours", ["version", "model"], registry=registry)
    ours.labels(version="1", model="mnist").inc()
    for status in (200, 204, 404):
        metrics.count_response(status)
    metrics.count_inference("mnist", None, 0.002, 0.001)
    metrics.count_inference("mnist", "2", 0.004, 0.0)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_metrics_app(registry)), base_url="http://metrics"
    ) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    lines = response.text.splitlines()
    escaped = 'a\\"} b'
    declared = torchserve_frontend_metrics()
    assert declared["Requests2XX"] == ["Level", "Hostname"]
    assert f'Requests2XX{{Level="Host",Hostname="{escaped}",}} 2.0' in lines
    assert f'Requests4XX{{Level="Host",Hostname="{escaped}",}} 1.0' in lines
    assert f'Requests5XX{{Level="Host",Hostname="{escaped}",}} 0.0' in lines
    assert declared["ts_inference_requests_total"] == ["model_name", "model_version", "hostname"]
    for version in ("default", "2"):
        assert f'ts_inference_requests_total{{model_name="mnist",model_version="{version}",' \
            f'hostname="{escaped}",}} 1.0' in lines
    assert 'ts_inference_latency_microseconds{model_name="mnist",model_version="2",' \
        f'hostname="{escaped}",}} 4000.0' in lines
    assert 'triserve_x_total{model="mnist",version="1"} 1.0' in lines  # prometheus-client's own spelling
    expected = generate_latest(registry).decode()
    assert response.text != expected and parsed(response.text) == parsed(expected)
    assert as_torchserve_writes(b"Requests2XX{Level=\"Host\"} 1.0\n") == b"Requests2XX{Level=\"Host\"} 1.0\n"
