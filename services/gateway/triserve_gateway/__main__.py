"""``triserve-gateway`` / ``python -m triserve_gateway``: serve the gateway's three listeners with uvicorn.

uvloop + httptools, access log off; settings from ``TRISERVE_GATEWAY_*`` (see
:mod:`triserve_gateway.settings`). A bad setting or routing file exits with one clear line.
"""

from __future__ import annotations

import sys

from triserve_common.server import run_service
from triserve_gateway.app import create_app, serve
from triserve_gateway.settings import GatewaySettings


def main() -> int:
    """Entry point of the ``triserve-gateway`` console script."""
    return run_service("triserve-gateway", GatewaySettings, create_app, serve)


if __name__ == "__main__":
    sys.exit(main())
