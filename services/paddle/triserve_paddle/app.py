"""``create_app(settings)``: the Paddle Inference service's FastAPI app."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

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
    """Load and verify the model (raises ``ArtifactIntegrityError`` if tampered) and build the app."""
    settings = settings or PaddleSettings()
    runtime = PaddleRuntime(settings)
    runtime.load()
    return build_app(settings, runtime, server_name=SERVER_NAME, server_version=_version())
