"""``create_app(settings)``: the Paddle Inference service's FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI

from triserve_common.repository import runtime_repository
from triserve_common.rest import build_app
from triserve_common.server import package_version
from triserve_paddle.runtime import PaddleRuntime
from triserve_paddle.settings import PaddleSettings

SERVER_NAME = "triserve-paddle"


def create_app(settings: PaddleSettings | None = None) -> FastAPI:
    """Load and verify the start models (``ArtifactIntegrityError`` if one is tampered with) and build
    the app; more versions are loaded and unloaded at run time through ``/v2/repository``."""
    settings = settings or PaddleSettings()
    kind = PaddleRuntime.artifact_kind
    repository = runtime_repository(settings, kind, PaddleRuntime, "predictor_pool_size")
    version = package_version(SERVER_NAME)
    return build_app(settings, repository, server_name=SERVER_NAME, server_version=version)
