"""``triserve up``: the gateway's gRPC port (7070, TorchServe's) and the TorchServe backend's own gRPC
ports do not collide, and every service is told its ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve_cli.launcher import PlatformConfig, service_specs

PORT_FIELDS = (
    "gateway_port", "management_port", "metrics_port", "gateway_grpc_port", "onnx_port", "paddle_port",
    "ts_inference_port", "ts_management_port", "ts_metrics_port", "ts_grpc_inference_port",
    "ts_grpc_management_port",
)  # fmt: skip


def test_default_ports_are_distinct_and_the_gateway_owns_7070(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TRISERVE_GATEWAY_GRPC_PORT", "TRISERVE_GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = PlatformConfig.from_env(run_dir=tmp_path, model_store=tmp_path)
    ports = {name: getattr(config, name) for name in PORT_FIELDS}
    assert len(set(ports.values())) == len(ports), ports
    assert config.gateway_grpc_port == 7070
    assert 7070 not in (config.ts_grpc_inference_port, config.ts_grpc_management_port)
    specs = {spec.name: spec for spec in service_specs(config)}
    assert specs["gateway"].env["TRISERVE_GATEWAY_GRPC_PORT"] == "7070"
    assert specs["gateway"].port_names["gRPC"] == 7070  # checked free before `up` starts anything
    torchserve = specs["torchserve"].env
    assert (torchserve["TS_GRPC_INFERENCE_PORT"], torchserve["TS_GRPC_MANAGEMENT_PORT"]) == ("7075", "7076")
    every_port = [port for spec in specs.values() for port in spec.port_names.values()]
    assert len(every_port) == len(set(every_port)), every_port


def test_grpc_port_from_the_gateway_setting_and_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRISERVE_GATEWAY_GRPC_PORT", "17070")
    assert PlatformConfig.from_env(run_dir=tmp_path, model_store=tmp_path).gateway_grpc_port == 17070
    config = PlatformConfig.from_env(run_dir=tmp_path, model_store=tmp_path, gateway_grpc_port=0)
    gateway = {spec.name: spec for spec in service_specs(config)}["gateway"]
    assert gateway.env["TRISERVE_GATEWAY_GRPC_PORT"] == "0" and "gRPC" not in gateway.port_names
