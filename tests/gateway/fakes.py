"""In-process fake backends and fixtures data for the gateway's unit tests (fakes only here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image

from tests.support.encode import png
from triserve_common.manifest import (
    Artifact,
    DataSplit,
    Manifest,
    Metrics,
    ModelInfo,
    Parity,
    PreprocessSpec,
    TensorSpec,
)
from triserve_gateway.admin import BackendAdminError, HeldVersion, LoadOptions
from triserve_gateway.app import create_app
from triserve_gateway.config import RoutingConfig
from triserve_gateway.models import ModelCatalog, ModelVersion
from triserve_gateway.settings import GatewaySettings

SPEC = PreprocessSpec(width=28, height=28, mean=[0.1307], std=[0.3081])  # MNIST's


def gray_png(value: int, size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    """A uniform image of gray ``value`` encoded as PNG."""
    color: Any = value if mode in ("L", "I") else (value,) * len(mode)
    return png(Image.new(mode, size, color))


def digit_png(d: int, **kw: Any) -> bytes:
    """An image the fake backends classify as digit ``d`` (gray level 26*d + 13)."""
    return gray_png(26 * d + 13, **kw)


def classify(x: np.ndarray) -> np.ndarray:
    """Fake model: class = mean gray level // 26, undoing the preprocessing; one-hot-ish logits."""
    gray = (x.reshape(x.shape[0], -1).mean(axis=1) * SPEC.std[0] + SPEC.mean[0]) * 255.0
    cls = np.clip((gray // 26).astype(int), 0, 9)
    logits = np.zeros((x.shape[0], 10), dtype=np.float32)
    logits[np.arange(x.shape[0]), cls] = 10.0
    return logits


class FakeBackend:
    """A BackendClient double: classifies with :func:`classify`, can fail, be slow or be down."""

    protocol = "fake"

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.url = f"fake://{name}"
        self.delay = delay
        self.healthy = True
        self.fail_with: BaseException | None = None
        self.fail_times: int | None = None  # fail this many calls then recover (None = while set)
        self.calls: list[int] = []  # rows per call
        self.request_ids: list[str | None] = []
        self.versions: list[str | None] = []
        self.closed = False
        self.gate: asyncio.Event | None = None  # calls wait for it when set

    async def infer(
        self, model: str, version: str | None, x: np.ndarray, request_id: str | None,
        input_name: str = "input", output_name: str = "logits",
    ) -> np.ndarray:
        self.calls.append(x.shape[0])
        self.request_ids.append(request_id)
        self.versions.append(version)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None and (self.fail_times is None or self.fail_times > 0):
            if self.fail_times is not None:
                self.fail_times -= 1
            raise self.fail_with
        return classify(x)

    async def health(self, timeout: float = 1.0) -> bool:
        return self.healthy

    async def describe(self, model: str, timeout: float = 1.0) -> dict[str, Any]:
        return {"version": "1", "engine": f"fake-{self.name}"}

    async def aclose(self) -> None:
        self.closed = True


def make_manifest(name: str = "mnist", version: str = "1") -> Manifest:
    return Manifest(
        name=name,
        version=version,
        created_at=datetime.now(UTC),
        framework_versions={"torch": "test"},
        data=DataSplit(source_dir="-", files=[], split="standard", seed=0, train_size=1, test_size=1),
        metrics=Metrics(accuracy=0.99, loss=0.01, epochs=1, training_seconds=1.0),
        model=ModelInfo(architecture="fake", parameters=1, macs_per_image=1),
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
        preprocessing=SPEC,
        labels=[str(i) for i in range(10)],
        parity=Parity(images=1, class_agreement={}, max_abs_logit_diff={}, tolerance=1e-4, passed=True),
        artifacts={"onnx": Artifact(format="onnx", files=[])},
    )


def write_store(root: Path, versions: tuple[str, ...] = ("1",)) -> Path:
    for v in versions:
        d = root / "mnist" / v
        d.mkdir(parents=True, exist_ok=True)
        (d / "manifest.json").write_text(make_manifest(version=v).model_dump_json(indent=2))
    return root


def catalog(versions: tuple[str, ...] = ("1",), max_pixels: int = 16_000_000) -> ModelCatalog:
    return ModelCatalog(ModelVersion.from_manifest(make_manifest(version=v), max_pixels) for v in versions)


def routing(
    strategy: str = "weighted",
    weights: dict[str, float] | None = None,
    batching: bool = True,
    **batch: Any,
) -> RoutingConfig:
    weights = weights or {"onnx": 1, "paddle": 1, "torchserve": 1}
    return RoutingConfig.model_validate(
        {
            "backends": {
                "onnx": {"protocol": "oip-v2", "url": "http://127.0.0.1:1"},
                "paddle": {"protocol": "oip-v2", "url": "http://127.0.0.1:2"},
                "torchserve": {"protocol": "torchserve", "url": "http://127.0.0.1:3"},
            },
            "models": {
                "mnist": {
                    "strategy": strategy,
                    "backends": [{"name": n, "weight": w} for n, w in weights.items()],
                    "batching": {"enabled": batching, **batch},
                }
            },
            "health": {"interval_s": 0.05, "timeout_s": 0.5},
            "circuit": {"failure_threshold": 2, "open_s": 0.2},
        }
    )


def fakes(delay: float = 0.0) -> dict[str, FakeBackend]:
    return {n: FakeBackend(n, delay) for n in ("onnx", "paddle", "torchserve")}


class FakeAdmin:
    """A BackendAdmin double: holds model versions with a worker count, records calls, can refuse loads."""

    def __init__(self, name: str, held: dict[tuple[str, str], int] | None = None) -> None:
        self.name = name
        self.holding: dict[tuple[str, str], int] = dict(held or {})
        self.calls: list[tuple[str, str, str, int]] = []
        self.refuse: str | None = None  # load answers this error when set
        self.delay = 0.0

    async def held(self) -> dict[tuple[str, str], HeldVersion]:
        def workers(n: int) -> list[dict[str, Any]]:
            return [{"id": f"{self.name}-{i}", "status": "READY", "gpu": False} for i in range(n)]

        return {key: HeldVersion(key[0], key[1], n > 0, workers(n)) for key, n in self.holding.items()}

    async def load(self, model: str, version: str, workers: int, options: LoadOptions) -> None:
        self.calls.append(("load", model, version, workers))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse is not None:
            raise BackendAdminError(f"backend '{self.name}' answered 500: {self.refuse}")
        self.holding[(model, version)] = max(1, workers)

    async def unload(self, model: str, version: str) -> None:
        self.calls.append(("unload", model, version, 0))
        self.holding.pop((model, version), None)

    async def scale(self, model: str, version: str, min_workers: int, max_workers: int) -> None:
        self.calls.append(("scale", model, version, min_workers))
        if min_workers <= 0:
            self.holding.pop((model, version), None)
        else:
            self.holding[(model, version)] = min_workers

    async def aclose(self) -> None:
        return None


def fake_admins(versions: tuple[str, ...] = ("1",), model: str = "mnist") -> dict[str, FakeAdmin]:
    """One FakeAdmin per fake backend, each already holding ``model``'s ``versions`` (1 worker)."""
    return {n: FakeAdmin(n, {(model, v): 1 for v in versions}) for n in ("onnx", "paddle", "torchserve")}


@asynccontextmanager
async def running_app(
    settings: GatewaySettings,
    backends: Mapping[str, FakeBackend],
    routing_config: RoutingConfig | None = None,
    admins: Mapping[str, FakeAdmin] | None = None,
) -> AsyncIterator[FastAPI]:
    """The gateway's app over the fake backends and admins (``fake_admins()`` unless given; the fakes'
    :func:`routing` unless given), inside its lifespan."""
    held = fake_admins() if admins is None else admins
    app = create_app(
        settings,
        routing=routing() if routing_config is None else routing_config,
        clients=lambda _: backends,  # type: ignore[arg-type,return-value]
        admins=lambda _: held,  # type: ignore[arg-type,return-value]
    )
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def asgi_client(app: Any, base_url: str = "http://gw") -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of ``app`` (a listener's ASGI app), in process."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
        yield client
