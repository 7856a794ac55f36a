"""Fixtures of the deploy tests: the services' real route tables (apps built by their own create_app)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.deploy.project import REPO, get_routes


@pytest.fixture(scope="session")
def routes() -> Iterator[dict[str, dict[str, str]]]:
    """Service → GET route name → path, from the apps each service's ``create_app`` builds."""
    from triserve_gateway.app import create_app as gateway_app
    from triserve_gateway.settings import GatewaySettings
    from triserve_onnx.app import create_app as onnx_app
    from triserve_onnx.settings import OnnxSettings
    from triserve_paddle.app import create_app as paddle_app
    from triserve_paddle.settings import PaddleSettings

    store = REPO / "model_store"
    onnx = onnx_app(OnnxSettings(model_store=store))
    paddle = paddle_app(PaddleSettings(model_store=store, warmup=False))
    gateway = gateway_app(GatewaySettings(model_store=store, management_key="deploy-tests"))
    gateway_routes = {**get_routes(gateway), **get_routes(gateway.state.metrics_app)}  # metrics: own port
    try:
        yield {"onnx": get_routes(onnx), "paddle": get_routes(paddle), "gateway": gateway_routes}
    finally:
        asyncio.run(onnx.state.dataplane.stop())
        asyncio.run(paddle.state.dataplane.stop())
