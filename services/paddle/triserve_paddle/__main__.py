"""``triserve-paddle`` / ``python -m triserve_paddle``: serve the model with Paddle Inference."""

from __future__ import annotations

import sys

from triserve_common.server import run_service
from triserve_paddle.app import SERVER_NAME, create_app
from triserve_paddle.settings import PaddleSettings


def main() -> None:
    """Run the service until SIGTERM/SIGINT (graceful: in-flight requests finish)."""
    sys.exit(run_service(SERVER_NAME, PaddleSettings, create_app))


if __name__ == "__main__":
    main()
