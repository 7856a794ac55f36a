"""How each of the four services is started (command, environment, ports) and how it tells it is ready."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from triserve_cli.launcher.config import PlatformConfig, PlatformError
from triserve_common.errors import TriserveError
from triserve_common.manifest import list_versions, read_manifest, verify_artifact
from triserve_common.paths import REPO_ROOT
from triserve_common.repository import ALL, parse_model_list


def torchserve_store(model_store: Path, model: str = "mnist", version: str | None = None) -> Path:
    """The folder TorchServe loads ``<model>.mar`` from: ``version``'s, else the highest with one."""
    versions = sorted(
        (p.parent for p in model_store.glob(f"{model}/*/{model}.mar") if p.parent.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if version is not None:
        versions = [p for p in versions if p.name == version]
    if not versions:
        raise PlatformError(f"no {model}/{version or '<version>'}/{model}.mar in model store {model_store}")
    return versions[-1]


def verify_torchserve_archives(model_store: Path) -> list[Path]:
    """Every ``<model>/<version>/*.mar`` TorchServe may load is the one its version's
    ``manifest.json`` describes (size, sha256); a missing or malformed manifest, or another archive,
    is a :class:`PlatformError` naming the file. (``start.sh`` checks the same: ``verify_mar.py``.)"""
    checked = []
    for version_dir in sorted({mar.parent for mar in model_store.glob("*/*/*.mar")}):
        try:
            verify_artifact(read_manifest(version_dir), version_dir, "torchserve")
        except TriserveError as exc:
            raise PlatformError(exc.message) from None
        unlisted = {p.name for p in version_dir.glob("*.mar")} - {
            Path(f.path).name for f in read_manifest(version_dir).artifacts["torchserve"].files
        }
        if unlisted:
            raise PlatformError(f"{version_dir / sorted(unlisted)[0]} is not listed in its manifest.json")
        checked.append(version_dir)
    return checked


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    ready_url: str
    """Answers 200 once the service is ready."""
    port_names: Mapping[str, int]


def torchserve_models(model_store: Path, models: str) -> str:
    """The platform's start set (``all``, ``none``, ``mnist,fashion:1``) in TorchServe's ``--models``
    syntax over the archives ``start.sh`` links: ``name=<name>.v<version>.mar,...``."""
    spec = parse_model_list(models)
    if spec == ALL:
        return "all"
    assert not isinstance(spec, str)
    entries = []
    for name, version in spec:
        versions = [version] if version else list_versions(model_store, name)
        for v in versions:
            if (model_store / name / v / f"{name}.mar").is_file():
                entries.append(f"{name}={name}.v{v}.mar")
    return ",".join(entries) or "none"


def _runtime_service_spec(config: PlatformConfig, name: str, port: int) -> ServiceSpec:
    """An OIP v2 runtime service (``triserve_<name>``, env prefix ``TRISERVE_<NAME>_``)."""
    prefix = f"TRISERVE_{name.upper()}_"
    return ServiceSpec(
        name=name,
        argv=(config.python, "-m", f"triserve_{name}"),
        env={
            f"{prefix}HOST": config.host,
            f"{prefix}PORT": str(port),
            f"{prefix}MODEL_STORE": str(config.model_store),
            # the platform's start set, unless this service's own setting is in the environment
            f"{prefix}LOAD_MODELS": os.environ.get(f"{prefix}LOAD_MODELS", config.models),
        },
        ready_url=f"{config.url(port)}/v2/health/ready",
        port_names={"http": port},
    )


def _torchserve_spec(config: PlatformConfig) -> ServiceSpec:
    """TorchServe through ``start.sh`` (it links the start set's archives and checks their sha256)."""
    try:
        ts_models = torchserve_models(config.model_store, config.models)
    except ValueError as exc:
        raise PlatformError(f"models: {exc}") from None
    return ServiceSpec(
        name="torchserve",
        argv=("bash", str(REPO_ROOT / "services" / "torchserve" / "start.sh")),
        env={
            "TS_HOST": config.host,
            "TS_INFERENCE_PORT": str(config.ts_inference_port),
            "TS_MANAGEMENT_PORT": str(config.ts_management_port),
            "TS_METRICS_PORT": str(config.ts_metrics_port),
            "TS_GRPC_INFERENCE_PORT": str(config.ts_grpc_inference_port),
            "TS_GRPC_MANAGEMENT_PORT": str(config.ts_grpc_management_port),
            "TS_MODEL_STORE": str(config.model_store),
            "TS_MODELS": ts_models,
            "TS_RUN_DIR": str(config.run_dir / "torchserve"),
            # start.sh runs `torchserve` from PATH: the one of this venv.
            "PATH": f"{Path(config.python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        ready_url=f"{config.url(config.ts_inference_port)}/ping",
        port_names={
            "inference": config.ts_inference_port,
            "management": config.ts_management_port,
            "metrics": config.ts_metrics_port,
            "gRPC inference": config.ts_grpc_inference_port,
            "gRPC management": config.ts_grpc_management_port,
        },
    )


def _gateway_spec(config: PlatformConfig) -> ServiceSpec:
    """The gateway (``triserve_gateway``): its listeners (HTTP inference, management, metrics; gRPC
    inference) and every backend's URL."""
    return ServiceSpec(
        name="gateway",
        argv=(config.python, "-m", "triserve_gateway"),
        env={
            "TRISERVE_GATEWAY_HOST": config.host,
            "TRISERVE_GATEWAY_PORT": str(config.gateway_port),
            "TRISERVE_GATEWAY_MANAGEMENT_HOST": config.host,
            "TRISERVE_GATEWAY_MANAGEMENT_PORT": str(config.management_port),
            "TRISERVE_GATEWAY_METRICS_HOST": config.host,
            "TRISERVE_GATEWAY_METRICS_PORT": str(config.metrics_port),
            "TRISERVE_GATEWAY_GRPC_PORT": str(config.gateway_grpc_port),
            "TRISERVE_GATEWAY_WORKERS": str(config.gateway_workers),
            "TRISERVE_GATEWAY_MANAGEMENT_KEY_FILE": str(config.management_key_file),
            "TRISERVE_GATEWAY_DISABLE_TOKEN_AUTH": str(config.disable_token_auth).lower(),
            "TRISERVE_GATEWAY_LOAD_MODELS": config.models,
            "TRISERVE_GATEWAY_MODEL_STORE": str(config.model_store),
            "TRISERVE_GATEWAY_TORCHSERVE_URL": config.url(config.ts_inference_port),
            "TRISERVE_GATEWAY_TORCHSERVE_MANAGEMENT_URL": config.url(config.ts_management_port),
            "TRISERVE_GATEWAY_ONNX_URL": config.url(config.onnx_port),
            "TRISERVE_GATEWAY_PADDLE_URL": config.url(config.paddle_port),
        },
        ready_url=f"{config.url(config.gateway_port)}/v2/health/ready",
        port_names={
            "http": config.gateway_port,
            "management": config.management_port,
            "metrics": config.metrics_port,
            **({"gRPC": config.gateway_grpc_port} if config.gateway_grpc_port > 0 else {}),
        },
    )


def service_specs(config: PlatformConfig) -> list[ServiceSpec]:
    """The four services in start order (backends first, gateway last)."""
    return [
        _torchserve_spec(config),
        _runtime_service_spec(config, "onnx", config.onnx_port),
        _runtime_service_spec(config, "paddle", config.paddle_port),
        _gateway_spec(config),
    ]
