"""``create_app(settings)``: the ONNX Runtime service's FastAPI app."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from triserve_common.rest import build_app
from triserve_onnx.runtime import OnnxRuntime
from triserve_onnx.settings import OnnxSettings

SERVER_NAME = "triserve-onnx"


def _version() -> str:
    try:
        return version("triserve-onnx")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: OnnxSettings | None = None) -> FastAPI:
    """Load and verify the model (raises ``ArtifactIntegrityError`` if tampered) and build the app."""
    settings = settings or OnnxSettings()
    runtime = OnnxRuntime(settings)
    runtime.load()
    return build_app(settings, runtime, server_name=SERVER_NAME, server_version=_version())
