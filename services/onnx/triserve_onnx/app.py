"""``create_app(settings)``: the ONNX Runtime service's FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI

from triserve_common.repository import runtime_repository
from triserve_common.rest import build_app
from triserve_common.server import package_version
from triserve_onnx.runtime import OnnxRuntime
from triserve_onnx.settings import OnnxSettings

SERVER_NAME = "triserve-onnx"


def create_app(settings: OnnxSettings | None = None) -> FastAPI:
    """Load and verify the start models (``ArtifactIntegrityError`` if one is tampered with) and build
    the app; more versions are loaded and unloaded at run time through ``/v2/repository``."""
    settings = settings or OnnxSettings()
    repository = runtime_repository(settings, OnnxRuntime.artifact_kind, OnnxRuntime, "workers")
    version = package_version(SERVER_NAME)
    return build_app(settings, repository, server_name=SERVER_NAME, server_version=version)
