"""What a register ``url`` names in the model store, TorchServe's errors for the rest, and the
dispatch of connections to the gateway's three listeners."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gateway.fakes import write_store
from triserve_gateway.listeners import Listener, PortRouter
from triserve_gateway.store import ArchiveConfig, ModelStore
from triserve_gateway.torchserve_errors import ModelNotFoundException


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(write_store(tmp_path, versions=("1", "2", "10")))


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mnist.mar", ("mnist", "10")),
        ("mnist", ("mnist", "10")),
        ("mnist/2", ("mnist", "2")),
        ("mnist/2/mnist.mar", ("mnist", "2")),
        ("mnist.v1.mar", ("mnist", "1")),
    ],
)
def test_store_names(store: ModelStore, url: str, named: tuple[str, str]) -> None:
    assert store.resolve_url(url) == named


def test_absolute_path_inside_the_store(store: ModelStore) -> None:
    assert store.resolve_url(str(store.root / "mnist" / "2" / "mnist.mar")) == ("mnist", "2")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "https://example.com/mnist.mar",
            "Given URL https://example.com/mnist.mar does not match any allowed URL(s)",
        ),
        ("FILE:///etc/passwd", "Given URL FILE:///etc/passwd does not match any allowed URL(s)"),
        ("../mnist.mar", "Relative path is not allowed in url: ../mnist.mar"),
        ("mnist/../../x", "Relative path is not allowed in url: mnist/../../x"),
        ("/etc/mnist.mar", "Model not found at: /etc/mnist.mar"),
        ("cifar.mar", "Model not found at: cifar.mar"),
        ("mnist/7", "Model not found at: mnist/7"),
        ("mnist/2/other.mar", "Model not found at: mnist/2/other.mar"),
        ("a/b/c/d", "Model not found at: a/b/c/d"),
    ],
)
def test_anything_else_is_torchserves_404(store: ModelStore, url: str, message: str) -> None:
    with pytest.raises(ModelNotFoundException) as err:
        store.resolve_url(url)
    assert err.value.status_code == 404 and err.value.message == message


def test_archive_config_defaults_without_an_archive(tmp_path: Path) -> None:
    assert ArchiveConfig.of(tmp_path, "mnist") == ArchiveConfig()


def test_archive_config_of_the_committed_archive(model_store: Path) -> None:
    config = ArchiveConfig.of(model_store / "mnist" / "1", "mnist")
    assert (config.min_workers, config.max_workers, config.batch_size, config.response_timeout) == (
        1,
        1,
        8,
        30,
    )


async def test_port_router_sends_each_connection_to_its_listener() -> None:
    seen: list[tuple[str, str]] = []

    def app(name: str) -> Any:
        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            seen.append((name, scope["type"]))

        return asgi

    router = PortRouter(
        [
            Listener("inference", "h", 1080, app("inference")),
            Listener("management", "h", 1081, app("management")),
        ],
        lifespan_app=app("lifespan"),
    )
    for port in (1081, 1080):
        await router({"type": "http", "server": ("127.0.0.1", port)}, None, None)  # type: ignore[arg-type]
    await router({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == [("management", "http"), ("inference", "http"), ("lifespan", "lifespan")]
    with pytest.raises(RuntimeError, match="unknown listener"):
        await router({"type": "http", "server": ("127.0.0.1", 9)}, None, None)  # type: ignore[arg-type]
