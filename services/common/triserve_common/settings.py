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
    """Settings of a runtime service (ONNX, Paddle): which model versions it loads at start."""

    model_name: str = "mnist"
    """Model to serve (when ``load_models`` is unset)."""
    model_version: str | None = None
    """Version to serve; None = the highest in the store."""
    load_models: str | None = None
    """Models loaded at start: ``all`` (every version in the store with this service's artifact),
    ``none``, or ``mnist,fashion:1`` (every version of a model, or one); unset = ``model_name`` /
    ``model_version``. More are loaded and unloaded at run time via ``/v2/repository``."""

    def startup_models(self) -> list[tuple[str, str | None]] | str:
        """``load_models`` parsed (see :func:`triserve_common.repository.parse_model_list`)."""
        from triserve_common.repository import parse_model_list

        if self.load_models is None:
            return [(self.model_name, self.model_version or "latest")]
        return parse_model_list(self.load_models)
