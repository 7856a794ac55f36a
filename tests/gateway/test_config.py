"""Routing config: the default YAML file, validation errors, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve_gateway.config import RoutingConfigError, apply_overrides, gateway_routing, load_routing
from triserve_gateway.settings import GatewaySettings


def test_default_routing_file_is_valid_and_holds_backend_ports() -> None:
    cfg = load_routing()
    assert set(cfg.backends) == {"onnx", "paddle", "torchserve"}
    assert cfg.backends["onnx"].port == 8001 and cfg.backends["paddle"].port == 8002
    assert cfg.backends["torchserve"].port == 8085
    assert cfg.backends["torchserve"].protocol == "torchserve"
    assert {r.name for r in cfg.models["mnist"].backends} == {"onnx", "paddle", "torchserve"}


def test_undefined_backend_and_bad_yaml_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text(
        "backends: {a: {protocol: oip-v2, url: 'http://x'}}\nmodels: {m: {backends: [{name: b}]}}\n"
    )
    with pytest.raises(RoutingConfigError, match="undefined backend"):
        load_routing(bad)
    bad.write_text("backends: [")
    with pytest.raises(RoutingConfigError, match="not valid YAML"):
        load_routing(bad)
    with pytest.raises(RoutingConfigError, match="cannot read"):
        load_routing(tmp_path / "missing.yaml")


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRISERVE_GATEWAY_ONNX_URL", "http://10.0.0.1:9001/")
    monkeypatch.setenv("TRISERVE_GATEWAY_BACKEND_URLS__PADDLE", "http://10.0.0.2:9002")
    monkeypatch.setenv("TRISERVE_GATEWAY_WEIGHTS", '{"torchserve": 0}')
    monkeypatch.setenv("TRISERVE_GATEWAY_STRATEGY", "least-outstanding")
    monkeypatch.setenv("TRISERVE_GATEWAY_BATCHING", "false")
    monkeypatch.setenv("TRISERVE_GATEWAY_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("TRISERVE_GATEWAY_CIRCUIT_OPEN_S", "1.5")
    cfg = gateway_routing(GatewaySettings())
    assert cfg.backends["onnx"].url == "http://10.0.0.1:9001"
    assert cfg.backends["paddle"].url == "http://10.0.0.2:9002"
    route = cfg.models["mnist"]
    assert {r.name: r.weight for r in route.backends}["torchserve"] == 0
    assert route.strategy == "least-outstanding"
    assert not route.batching.enabled and route.batching.max_batch_size == 8
    assert cfg.circuit.open_s == 1.5
    assert load_routing().models["mnist"].batching.enabled  # the file itself is untouched


def test_override_of_unknown_backend_is_an_error() -> None:
    with pytest.raises(RoutingConfigError, match="undefined backend"):
        apply_overrides(load_routing(), GatewaySettings(backend_urls={"tf": "http://x"}))


def test_strategy_override_reaches_models_without_a_route() -> None:
    """``TRISERVE_GATEWAY_STRATEGY`` applies to every route, and to models registered without one."""
    base = load_routing()
    assert base.default_strategy == "p2c"
    cfg = apply_overrides(base, GatewaySettings(strategy="round-robin"))
    assert cfg.default_strategy == "round-robin" and cfg.models["mnist"].strategy == "round-robin"
