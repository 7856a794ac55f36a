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
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from triserve_common.limits import ServerLimits
from triserve_common.settings import MIB, ServiceSettings
from triserve_gateway.cpus import WorkerChoice, resolve_workers
from triserve_gateway.limits import Limits
from triserve_gateway.routing import StrategyName

DEFAULT_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
"""Image formats accepted by default (Pillow names); animated ones count by their first frame."""
ENV_PREFIX = "TRISERVE_GATEWAY_"

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
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", protected_namespaces=()
    )

    port: int = 8080
    """Inference API port (TorchServe's and KServe v2's inference routes, health probes)."""
    workers: int = Field(default=0, ge=0, le=64)
    """Gateway processes serving the inference port (``SO_REUSEPORT``: the kernel spreads connections
    over them); each has its own batchers and backend connections. The first also serves the
    management and metrics ports and owns the model registry, which the others mirror within 0.1 s.
    0 = auto: one per CPU this process may use (affinity mask, cgroup CPU quota), at most 4; the log
    says how many and why. See docs/DEVELOPING.md ("Gateway processes")."""
    management_host: str = "127.0.0.1"
    """Address the management API binds to."""
    management_port: int = 8081
    """Management API port: TorchServe's management API and the v2 model repository extension."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds to."""
    metrics_port: int = 8082
    """Prometheus metrics port (``GET /metrics``, open)."""
    grpc_port: int = Field(default=7070, ge=0, le=65535)
    """KServe v2 gRPC inference port (``inference.GRPCInferenceService``, TorchServe's gRPC inference
    port), on the inference address ``host``, served by every gateway process; 0 = no gRPC."""
    management_key: SecretStr | None = None
    """Key the management API requires (``Authorization: Bearer <key>``); unset = read or generate
    ``management_key_file``."""
    management_key_file: Path = Path("key_file.management")
    """File holding the management key: read when it exists (e.g. a mounted Secret), else created
    at first start with a generated key (mode 0600); the log prints its path."""
    inference_key: SecretStr | None = None
    """Key the inference API requires; unset (and no ``inference_key_file``) = inference is open."""
    inference_key_file: Path | None = None
    """File holding the inference key (must exist when set)."""
    disable_token_auth: bool = False
    """Switch every key check off (as TorchServe's ``--disable-token-auth``): local development and
    TorchServe's own API test collections only; logged as a warning."""
    load_models: str = "all"
    """Models registered at start, as TorchServe's ``load_models``: ``all`` (every model version in
    the store a backend can run), ``none``, or ``mnist,fashion:1`` (a model's every version, or one)."""
    max_body_bytes: int = 8 * MIB
    """Largest request body accepted (413 above)."""
    max_rows_per_request: int = Field(default=256, ge=1)
    """Most rows (images or tensor rows) in one request, whatever the backend (413 above)."""
    max_images_per_request: int = Field(default=64, ge=1)
    """Most encoded images in one request: multipart file parts or BYTES elements (413 above)."""
    max_image_pixels: int = Field(default=16_000_000, ge=1)
    """Largest image, in pixels, judged from its header before decoding (413 above)."""
    max_request_pixels: int = Field(default=32_000_000, ge=1)
    """Most pixels of all images of one request together, judged from their headers (413 above)."""
    inline_decode_max_pixels: int = Field(default=65_536, ge=0)
    """Requests whose images declare at most this many pixels are decoded on the event loop;
    larger ones in a worker thread."""
    image_formats: Annotated[list[str], NoDecode] = list(DEFAULT_IMAGE_FORMATS)
    """Image formats accepted (Pillow format names, comma separated in the env; others get 415)."""

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

    explain_steps: int = 32
    """Integrated Gradients steps of an explanation that names none (``?steps=``)."""
    explain_max_steps: int = 128
    """Most steps an explanation may ask for (400 above; the TorchServe handler's own cap is 256)."""
    explain_max_images: int = 1
    """Images per explanation request (413 above; at most 4): each costs ``steps`` forward+backward passes."""

    @field_validator("image_formats", mode="before")
    @classmethod
    def _formats(cls, value: object) -> object:
        """Comma-separated in the env (``PNG,JPEG``), upper-cased, as Pillow names them."""
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v).strip().upper() for v in value]
        return value

    def worker_choice(self) -> WorkerChoice:
        """How many gateway processes and why: ``workers``, or with 0 auto (:mod:`triserve_gateway.cpus`)."""
        return resolve_workers(self.workers)

    def worker_count(self) -> int:
        """How many gateway processes (:meth:`worker_choice`)."""
        return self.worker_choice().count

    @staticmethod
    def env_name(field: str) -> str:
        """The environment variable of a setting (error messages name it)."""
        return f"{ENV_PREFIX}{field.upper()}"

    @model_validator(mode="after")
    def _distinct_ports(self) -> GatewaySettings:
        ports = {"port": self.port, "management_port": self.management_port,
                 "metrics_port": self.metrics_port}
        if self.grpc_port:
            ports["grpc_port"] = self.grpc_port
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"the listeners need different ports, got {ports}")
        return self

    # ---- overload protection (docs/operations.md) ----
    max_in_flight: int = Field(default=64, ge=1)
    """Requests per model admitted into the core at once (preprocessing, batching, backend calls)."""
    max_queue: int = Field(default=128, ge=0)
    """Requests per model waiting for admission; above it: 503 with Retry-After at once."""
    retry_after_s: float = Field(default=1.0, gt=0)
    """``Retry-After`` of an overload 503, in seconds (rounded up)."""
    request_timeout_ms: float = Field(default=5000.0, gt=0)
    """End-to-end deadline of an inference request (504 when it passes); ``X-Request-Timeout``
    (ms) may ask for less."""
    retry_budget_percent: float = Field(default=0.2, ge=0)
    """Retries and hedges on another backend may add at most this share of requests (over 10 s)..."""
    retry_budget_min_per_s: float = Field(default=10.0, ge=0)
    """...plus this many retries a second, so that a quiet gateway can still fail over."""
    attempt_timeout_min_ms: float = Field(default=100.0, gt=0)
    """Floor of the per-attempt timeout derived from a backend's observed latency (an attempt
    running 1.5x longer gets a hedge on another backend)."""
    attempt_timeout_max_ms: float = Field(default=400.0, gt=0)
    """Ceiling of the per-attempt timeout (and its value before a backend's first answer)."""
    max_connections: int = Field(default=2048, ge=1)
    """Open client connections (and running requests) the inference listener accepts; above it
    uvicorn answers 503."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """A client must send a request's complete headers within this time, or its connection is
    closed (slow-loris protection)."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """A client must send a request's complete body within this time after its headers (408)."""
    keep_alive_timeout_s: int = Field(default=75, ge=1)
    """Idle keep-alive connections are closed after this many seconds."""

    def limits(self) -> Limits:
        """The core's overload limits (HTTP-free) from these settings."""
        return Limits(
            max_in_flight=self.max_in_flight,
            max_queue=self.max_queue,
            retry_after_s=self.retry_after_s,
            request_timeout_s=self.request_timeout_ms / 1000.0,
            retry_budget_percent=self.retry_budget_percent,
            retry_budget_min_per_s=self.retry_budget_min_per_s,
            attempt_timeout_min_s=self.attempt_timeout_min_ms / 1000.0,
            attempt_timeout_max_s=max(self.attempt_timeout_min_ms, self.attempt_timeout_max_ms) / 1000.0,
        )

    def server_limits(self) -> ServerLimits:
        """The inference listener's connection limit and read timeouts (uvicorn)."""
        return ServerLimits(
            max_connections=self.max_connections,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_timeout_s=self.keep_alive_timeout_s,
        )

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
