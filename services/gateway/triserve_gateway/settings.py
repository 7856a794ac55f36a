"""Gateway settings (env prefix ``TRISERVE_GATEWAY_``); routing itself lives in the YAML file.

Every field below can override the routing file from the environment, e.g.::

    TRISERVE_GATEWAY_PORT=8080
    TRISERVE_GATEWAY_ROUTING_FILE=/etc/triserve/routing.yaml
    TRISERVE_GATEWAY_ONNX_URL=http://10.0.0.5:8001        # backend URLs by name (shortcuts)
    TRISERVE_GATEWAY_BACKEND_URLS='{"onnx": "http://..."}' # any backend, JSON (or __ONNX=...)
    TRISERVE_GATEWAY_WEIGHTS='{"onnx": 90, "paddle": 10}'  # canary weights for every model
    TRISERVE_GATEWAY_STRATEGY=least-outstanding
    TRISERVE_GATEWAY_BATCHING=false
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pydantic_settings import SettingsConfigDict

from triserve_common.settings import MIB, ServiceSettings
from triserve_gateway.routing import StrategyName

DEFAULT_ROUTING_FILE = Path(__file__).resolve().parent.parent / "routing.yaml"
"""``services/gateway/routing.yaml``: backends, their ports and per-model routing."""


class _Overrides(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingOverrides(_Overrides):
    """Fields of every model's ``batching`` config to replace (None = keep the file's value)."""

    enabled: bool | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    max_concurrent_batches: int | None = None


class HealthOverrides(_Overrides):
    """Fields of the ``health`` config to replace."""

    interval_s: float | None = None


class CircuitOverrides(_Overrides):
    """Fields of the ``circuit`` config to replace."""

    failure_threshold: int | None = None
    open_s: float | None = None


class RoutingOverrides(_Overrides):
    """What the environment changes in the routing file, shaped like the file itself.

    Each nested part's fields are named as in the routing config it overrides, so it is applied
    by validation (:func:`triserve_gateway.config.apply_overrides`), not by name tables.
    """

    backend_urls: dict[str, str] = {}
    """Inference URL by backend name."""
    management_urls: dict[str, str] = {}
    """Management URL by backend name."""
    backend_timeout_s: float | None = None
    weights: dict[str, float] = {}
    """Weight by backend name, for every model routing to it."""
    strategy: StrategyName | None = None
    batching: BatchingOverrides = BatchingOverrides()
    health: HealthOverrides = HealthOverrides()
    circuit: CircuitOverrides = CircuitOverrides()


class GatewaySettings(ServiceSettings):
    """``TRISERVE_GATEWAY_*``: listen address, limits and overrides of the routing file."""

    model_config = SettingsConfigDict(
        env_prefix="TRISERVE_GATEWAY_", env_nested_delimiter="__", extra="ignore", protected_namespaces=()
    )

    port: int = 8080
    max_body_bytes: int = 8 * MIB
    """Largest request body accepted (413 above)."""
    max_image_pixels: int = 16_000_000
    """Largest decoded image, in pixels (413 above): protection against decompression bombs."""
    inline_decode_max_bytes: int = 256 * 1024
    """Images up to this size are decoded on the event loop; bigger ones in a worker thread."""

    routing_file: Path = DEFAULT_ROUTING_FILE
    """YAML routing config (backends, models, strategies, batching, health, circuit breaker)."""
    onnx_url: str | None = None
    """Override of backend ``onnx``'s URL."""
    paddle_url: str | None = None
    """Override of backend ``paddle``'s URL."""
    torchserve_url: str | None = None
    """Override of backend ``torchserve``'s inference URL."""
    torchserve_management_url: str | None = None
    """Override of backend ``torchserve``'s management URL."""
    backend_urls: dict[str, str] = {}
    """Overrides of any backend's URL, by backend name."""
    weights: dict[str, float] = {}
    """Overrides of backend weights (for every model routing to that backend)."""
    strategy: StrategyName | None = None
    """Override of every model's routing strategy."""
    batching: bool | None = None
    """Switch dynamic batching on/off for every model."""
    max_batch_size: int | None = None
    """Override of every model's ``batching.max_batch_size``."""
    max_queue_delay_ms: float | None = None
    """Override of every model's ``batching.max_queue_delay_ms``."""
    max_concurrent_batches: int | None = None
    """Override of every model's ``batching.max_concurrent_batches``."""
    backend_timeout_s: float | None = None
    """Override of every backend's request timeout."""
    health_interval_s: float | None = None
    """Override of the active health-check period."""
    circuit_failure_threshold: int | None = None
    """Override of the consecutive failures that eject a backend."""
    circuit_open_s: float | None = None
    """Override of how long an ejected backend waits before a half-open probe."""

    def routing_overrides(self) -> RoutingOverrides:
        """The override fields above, shaped like the routing file."""
        urls = dict(self.backend_urls)
        shortcuts = {"onnx": self.onnx_url, "paddle": self.paddle_url, "torchserve": self.torchserve_url}
        urls.update({name: url for name, url in shortcuts.items() if url})
        management = {"torchserve": self.torchserve_management_url} if self.torchserve_management_url else {}
        return RoutingOverrides(
            backend_urls=urls,
            management_urls=management,
            backend_timeout_s=self.backend_timeout_s,
            weights=self.weights,
            strategy=self.strategy,
            batching=BatchingOverrides(
                enabled=self.batching,
                max_batch_size=self.max_batch_size,
                max_queue_delay_ms=self.max_queue_delay_ms,
                max_concurrent_batches=self.max_concurrent_batches,
            ),
            health=HealthOverrides(interval_s=self.health_interval_s),
            circuit=CircuitOverrides(
                failure_threshold=self.circuit_failure_threshold, open_s=self.circuit_open_s
            ),
        )
