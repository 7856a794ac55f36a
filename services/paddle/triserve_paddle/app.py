"""``create_app(settings)``: the Paddle Inference service's FastAPI app."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from triserve_common.repository import runtime_repository
from triserve_common.rest import build_app
from triserve_paddle.runtime import PaddleRuntime
from triserve_paddle.settings import PaddleSettings

SERVER_NAME = "triserve-paddle"


def _version() -> str:
    try:
        return version("triserve-paddle")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: PaddleSettings | None = None) -> FastAPI:
    """Load and verify the start models (``ArtifactIntegrityError`` if one is tampered with) and build
    the app; more versions are loaded and unloaded at run time through ``/v2/repository``."""
    settings = settings or PaddleSettings()
    kind = PaddleRuntime.artifact_kind
    repository = runtime_repository(settings, kind, PaddleRuntime, "predictor_pool_size")
    return build_app(settings, repository, server_name=SERVER_NAME, server_version=_version())
