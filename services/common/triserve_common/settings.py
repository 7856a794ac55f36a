"""Settings base for every service: pydantic-settings, one env prefix per service.

:class:`ServiceSettings` is what every HTTP service has (the gateway uses it as is);
:class:`RuntimeSettings` adds the model a runtime service serves. A service subclasses one and
sets its own ``env_prefix``::

    class OnnxSettings(RuntimeSettings):
        model_config = SettingsConfigDict(env_prefix="TRISERVE_ONNX_")
        port: int = 8001
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Settings every HTTP service has."""

    model_config = SettingsConfigDict(env_prefix="TRISERVE_", extra="ignore", protected_namespaces=())

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 8000
    """TCP port to bind."""
    log_level: str = "info"
    """Python/uvicorn log level."""
    model_store: Path = Path("model_store")
    """Model store root (``<store>/<model>/<version>/manifest.json``)."""
    max_body_bytes: int = 16 * MIB
    """Largest request body accepted (413 above)."""
    graceful_shutdown_s: float = 30.0
    """How long in-flight requests may take to finish on shutdown."""

    def base_url(self) -> str:
        """URL this service answers on (for clients and probes)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


class RuntimeSettings(ServiceSettings):
    """Settings of a runtime service (ONNX, Paddle): which model version it serves."""

    model_name: str = "mnist"
    """Model to serve."""
    model_version: str | None = None
    """Version to serve; None = the highest in the store."""
