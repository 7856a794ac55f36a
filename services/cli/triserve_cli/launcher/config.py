"""Launcher settings (``TRISERVE_PLATFORM_*``) and :class:`PlatformConfig`: where and on which ports
the platform runs, defaults read from each service's own settings and the gateway's routing file."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings, SettingsConfigDict

from triserve_common.paths import REPO_ROOT

RUN_ID_ENV = "TRISERVE_RUN_ID"
JAVA_MIN_VERSION = 17
TORCHSERVE_GRPC_PORTS = (7075, 7076)
"""The TorchServe backend's built-in gRPC inference / management ports (it cannot switch gRPC off):
TorchServe's own 7070/7071 moved out of the way, as its REST ports moved to 8085-8087 (the gateway
serves gRPC inference on 7070)."""
JAVA_INSTALL_HINT = (
    "apt-get install -y openjdk-17-jre-headless  (as root; or set JAVA_HOME to a JDK/JRE >= 17)"
)


class PlatformError(RuntimeError):
    """The platform could not be started or stopped; the message says why (with log tails)."""


class PlatformSettings(BaseSettings):
    """Settings of the local launcher (``triserve up``); each service keeps its own settings and prefix."""

    model_config = SettingsConfigDict(env_prefix="TRISERVE_PLATFORM_", extra="ignore")

    run_dir: Path = REPO_ROOT / "run"
    """Folder for pid files, ``platform.json`` and ``logs/``: ``run/`` of the checkout the CLI is installed
    from, wherever it is called from (a relative path set here is taken from the current directory)."""
    model_store: Path = REPO_ROOT / "model_store"
    """Model store every backend serves from (passed to each service)."""
    host: str = "127.0.0.1"
    """Address every service binds to."""
    ready_timeout_s: float = 300.0
    """How long ``up`` waits for every service to be ready before failing."""
    stop_timeout_s: float = 20.0
    """How long ``down`` waits after SIGTERM before SIGKILL."""
    models: str = "all"
    """Models every backend loads and the gateway registers at start (TorchServe's ``--models``):
    ``all``, ``none`` (register them later on the management API), or ``mnist,fashion:1``."""
    disable_token_auth: bool = False
    """Start the gateway with its management key check off (TorchServe's ``--disable-token-auth``)."""


def _service_defaults() -> dict[str, Any]:
    """Default ports from the services' own settings and the gateway's routing file (env included)."""
    from triserve_gateway.config import gateway_routing
    from triserve_gateway.settings import GatewaySettings
    from triserve_onnx.settings import OnnxSettings
    from triserve_paddle.settings import PaddleSettings

    gateway = GatewaySettings()
    routing = gateway_routing(gateway)
    torchserve = routing.backends["torchserve"]
    ts_ports = {
        "ts_inference_port": torchserve.url,
        "ts_management_port": torchserve.management_url,
        "ts_metrics_port": torchserve.metrics_url,
    }
    missing = [k for k, url in ts_ports.items() if url is None or urlsplit(url).port is None]
    if missing:
        raise PlatformError(f"the gateway's routing file gives no TorchServe port for {', '.join(missing)}")
    return {
        "gateway_port": gateway.port,
        "management_port": gateway.management_port,
        "metrics_port": gateway.metrics_port,
        "gateway_grpc_port": gateway.grpc_port,
        "gateway_workers": gateway.workers,
        "onnx_port": OnnxSettings().port,
        "paddle_port": PaddleSettings().port,
        "settle_s": routing.health.interval_s + routing.health.timeout_s,
        **{k: int(urlsplit(url).port or 0) for k, url in ts_ports.items() if url},
    }


@dataclass(frozen=True)
class PlatformConfig:
    """Where and on which ports the platform runs; build it with :meth:`from_env`."""

    run_dir: Path
    model_store: Path
    host: str
    gateway_port: int
    onnx_port: int
    paddle_port: int
    ts_inference_port: int
    ts_management_port: int
    ts_metrics_port: int
    ready_timeout_s: float
    stop_timeout_s: float
    management_port: int = 8081
    """Gateway management API."""
    metrics_port: int = 8082
    """Gateway metrics."""
    gateway_grpc_port: int = 7070
    """Gateway gRPC inference (KServe v2); 0 = off (``from_env``: the gateway's ``grpc_port``)."""
    models: str = "all"
    """Start set of every service (:attr:`PlatformSettings.models`)."""
    gateway_workers: int = 0
    """Gateway processes (``TRISERVE_GATEWAY_WORKERS``; ``from_env``: the gateway's setting); 0 = auto,
    one per CPU the gateway may use, at most 4 (:func:`triserve_gateway.cpus.auto_workers`)."""
    disable_token_auth: bool = False
    ts_grpc_inference_port: int = TORCHSERVE_GRPC_PORTS[0]
    ts_grpc_management_port: int = TORCHSERVE_GRPC_PORTS[1]
    settle_s: float = 0.0
    """Extra wait once all services are ready (``from_env``: the gateway's health-check period)."""
    python: str = field(default=sys.executable)

    @classmethod
    def from_env(cls, **overrides: Any) -> PlatformConfig:
        """Defaults from the settings classes (env variables included), then ``overrides`` (not None)."""
        settings = PlatformSettings()
        values: dict[str, Any] = {
            "run_dir": settings.run_dir,
            "model_store": settings.model_store,
            "host": settings.host,
            "ready_timeout_s": settings.ready_timeout_s,
            "stop_timeout_s": settings.stop_timeout_s,
            "models": settings.models,
            "disable_token_auth": settings.disable_token_auth,
            **_service_defaults(),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["run_dir"] = Path(values["run_dir"]).resolve()
        values["model_store"] = Path(values["model_store"]).resolve()
        return cls(**values)

    def url(self, port: int) -> str:
        """``http://host:port`` as a client on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{port}"

    @property
    def log_dir(self) -> Path:
        """Where every service's log goes."""
        return self.run_dir / "logs"

    @property
    def management_key_file(self) -> Path:
        """Where the gateway keeps its generated management key (mode 0600)."""
        return self.run_dir / "gateway" / "key_file.management"
