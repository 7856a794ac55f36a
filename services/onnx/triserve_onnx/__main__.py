"""``triserve-onnx`` / ``python -m triserve_onnx``: serve the model with ONNX Runtime."""

from __future__ import annotations

import sys

from triserve_common.server import run_service
from triserve_onnx.app import SERVER_NAME, create_app
from triserve_onnx.settings import OnnxSettings


def main() -> None:
    """Run the service until SIGTERM/SIGINT (graceful: in-flight requests finish)."""
    sys.exit(run_service(SERVER_NAME, OnnxSettings, create_app))


if __name__ == "__main__":
    main()
