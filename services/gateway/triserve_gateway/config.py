"""Routing config: the YAML file (``services/gateway/routing.yaml``) plus env overrides.

Schema (see the default file for a commented example)::

    backends:            # name -> how to reach it
      onnx: {protocol: oip-v2, url: "http://127.0.0.1:8001", artifact: onnx, timeout_s: 5}
      torchserve: {protocol: torchserve, url: "http://127.0.0.1:8085", artifact: torchserve,
                   management_url: "http://127.0.0.1:8086", metrics_url: "http://127.0.0.1:8087"}
    models:
      mnist:
        strategy: p2c               # p2c | weighted | round-robin | least-outstanding | fastest
        backends: [{name: onnx, weight: 100}, {name: torchserve, weight: 1}]
        batching: {enabled: true, max_batch_size: 32, max_queue_delay_ms: 2}
        default_version: "1"        # optional: else the highest registered version
        shadow:                     # optional: mirror a share of requests to candidates (docs/shadow.md)
          candidates: [{backend: paddle, fraction: 0.1}, {version: "2", fraction: 0.05}]
          max_concurrent: 2
          max_queue: 16
    health: {interval_s: 2, timeout_s: 1}
    circuit: {failure_threshold: 3, open_s: 5}

Other tools read backend ports from here (:func:`load_routing`), not from duplicated literals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from triserve_common.errors import TriserveError
from triserve_common.manifest import ArtifactKind
from triserve_gateway.routing import DEFAULT_STRATEGY, StrategyName
from triserve_gateway.settings import DEFAULT_ROUTING_FILE, GatewaySettings, RoutingOverrides

Protocol = Literal["oip-v2", "torchserve"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BackendConfig(_Strict):
    """How to reach one backend."""

    protocol: Protocol
    url: str
    """Inference base URL (OIP v2 root, or TorchServe's inference API)."""
    management_url: str | None = None
    """TorchServe management API (register, scale, unregister, describe)."""
    artifact: ArtifactKind | None = None
    """Manifest artifact this backend runs (``onnx``, ``paddle``, ``torchserve``); a model version
    without it is not loaded there. None = any."""
    metrics_url: str | None = None
    """TorchServe metrics API (informational)."""
    timeout_s: float = Field(default=5.0, gt=0)
    """Per-request timeout towards this backend (504 when exceeded and no other backend helps)."""
    max_connections: int = Field(default=512, ge=1)
    """Pooled keep-alive connections to this backend."""

    @property
    def port(self) -> int | None:
        """Port of :attr:`url`."""
        return urlsplit(self.url).port


class BackendRef(_Strict):
    """A backend serving a model, with its share of traffic."""

    name: str
    weight: float = Field(default=1.0, ge=0)
    """Relative worth: the share under ``weighted``, the cost divisor under ``p2c``; 0 = no regular
    traffic, failover and forced use only."""


class BatchingConfig(_Strict):
    """Dynamic batching towards each backend of a model."""

    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1)
    """Most rows (images) in one backend call."""
    max_queue_delay_ms: float = Field(default=2.0, ge=0)
    """Longest a request waits for companions."""
    max_concurrent_batches: int = Field(default=2, ge=1)
    """Batches in flight per backend before requests start waiting to be batched, from the whole
    gateway instance: each of its N processes takes ``ceil(max_concurrent_batches / N)``."""


class ShadowCandidate(_Strict):
    """Where mirrored requests go: another backend, another version of the model, or both."""

    backend: str | None = None
    """Backend to mirror to (None = the backend that answered the request)."""
    version: str | None = None
    """Model version to ask it for (None = the version that answered the request)."""
    fraction: float = Field(gt=0, le=1)
    """Share of the route's successful requests mirrored to this candidate."""

    @model_validator(mode="after")
    def _names_something(self) -> ShadowCandidate:
        if self.backend is None and self.version is None:
            raise ValueError("a shadow candidate names a backend, a version, or both")
        return self


class ShadowConfig(_Strict):
    """Shadow traffic of one model: mirrored after the answer is sent, dropped first under load."""

    candidates: list[ShadowCandidate] = Field(min_length=1)
    max_concurrent: int = Field(default=2, ge=1)
    """Shadow calls in flight at once for this model."""
    max_queue: int = Field(default=16, ge=0)
    """Shadows waiting for a free slot; beyond that a new shadow is dropped (and counted)."""
    timeout_s: float = Field(default=5.0, gt=0)
    """Longest one shadow call may take (a slower one counts as failed)."""


class ModelRoute(_Strict):
    """Routing of one model."""

    backends: list[BackendRef] = Field(min_length=1)
    strategy: StrategyName = DEFAULT_STRATEGY
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_attempts: int | None = Field(default=None, ge=1)
    """Backends tried per request (first try + failovers); None = every backend of the model."""
    shadow: ShadowConfig | None = None
    """Shadow traffic to candidates (:mod:`triserve_gateway.shadow`); None = none."""
    default_version: str | None = None
    """Version a request without one gets, once registered at start; None = the highest registered
    (the management API's ``set-default`` changes it at run time)."""


class HealthConfig(_Strict):
    """Active health checks."""

    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)


class CircuitConfig(_Strict):
    """Passive ejection (circuit breaker) per backend."""

    failure_threshold: int = Field(default=3, ge=1)
    open_s: float = Field(default=5.0, ge=0)


class RoutingConfig(_Strict):
    """The whole routing file."""

    backends: dict[str, BackendConfig]
    models: dict[str, ModelRoute]
    health: HealthConfig = Field(default_factory=HealthConfig)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    default_strategy: StrategyName = DEFAULT_STRATEGY
    """Strategy of a model registered without a route under ``models:`` (e.g. ``fashion``); the
    strategy override (``TRISERVE_GATEWAY_STRATEGY``) sets it too."""

    @model_validator(mode="after")
    def _check_refs(self) -> RoutingConfig:
        for model, route in self.models.items():
            names = [ref.name for ref in route.backends]
            unknown = sorted(set(names) - set(self.backends))
            if unknown:
                raise ValueError(
                    f"model '{model}' routes to undefined backend(s) {', '.join(unknown)} "
                    f"(defined: {', '.join(sorted(self.backends))})"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"model '{model}' lists a backend twice")
            shadows = [c.backend for c in route.shadow.candidates if c.backend] if route.shadow else []
            unknown = sorted(set(shadows) - set(self.backends))
            if unknown:
                raise ValueError(
                    f"model '{model}' shadows to undefined backend(s) {', '.join(unknown)} "
                    f"(defined: {', '.join(sorted(self.backends))})"
                )
        return self


class RoutingConfigError(TriserveError, ValueError):
    """The routing file is missing or invalid; the message names the file and the problem."""


def load_routing(path: Path | None = None) -> RoutingConfig:
    """Parse and validate a routing file (default: ``services/gateway/routing.yaml``)."""
    path = path or DEFAULT_ROUTING_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RoutingConfigError(f"cannot read routing file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RoutingConfigError(f"routing file {path} is not valid YAML: {exc}") from None
    try:
        return RoutingConfig.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RoutingConfigError(f"routing file {path}: {detail}") from None


def apply_overrides(config: RoutingConfig, settings: GatewaySettings | RoutingOverrides) -> RoutingConfig:
    """A copy of ``config`` with the settings' (env) overrides applied, validated like the file."""
    o = settings.routing_overrides() if isinstance(settings, GatewaySettings) else settings
    cfg = config.model_copy(deep=True)
    unknown = [name for name in o.backend_urls if name not in cfg.backends]
    if unknown:
        raise RoutingConfigError(f"URL override for undefined backend '{unknown[0]}'")
    for name, backend in cfg.backends.items():
        if name in o.backend_urls:
            backend.url = o.backend_urls[name].rstrip("/")
        if name in o.management_urls:
            backend.management_url = o.management_urls[name].rstrip("/")
        if o.backend_timeout_s is not None:
            backend.timeout_s = o.backend_timeout_s
    for route in cfg.models.values():
        for ref in route.backends:
            ref.weight = o.weights.get(ref.name, ref.weight)
        route.strategy = o.strategy or route.strategy
        route.batching = _updated(route.batching, o.batching)
    cfg.default_strategy = o.strategy or cfg.default_strategy
    cfg.health = _updated(cfg.health, o.health)
    cfg.circuit = _updated(cfg.circuit, o.circuit)
    return cfg


M = TypeVar("M", bound=BaseModel)


def _updated(target: M, overrides: BaseModel) -> M:
    """``target`` with the fields ``overrides`` sets (not None), validated (unknown fields fail)."""
    changes = overrides.model_dump(exclude_none=True)
    if not changes:
        return target
    try:
        return type(target).model_validate({**target.model_dump(), **changes})
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RoutingConfigError(f"invalid routing override: {detail}") from None


def gateway_routing(settings: GatewaySettings) -> RoutingConfig:
    """The effective routing: the settings' routing file with their overrides."""
    return apply_overrides(load_routing(settings.routing_file), settings)


__all__ = [
    "BackendConfig",
    "BackendRef",
    "BatchingConfig",
    "CircuitConfig",
    "GatewaySettings",
    "HealthConfig",
    "ModelRoute",
    "RoutingConfig",
    "RoutingConfigError",
    "RoutingOverrides",
    "ShadowCandidate",
    "ShadowConfig",
    "apply_overrides",
    "gateway_routing",
    "load_routing",
]
