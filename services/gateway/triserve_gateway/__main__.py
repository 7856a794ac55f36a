"""``triserve-gateway`` / ``python -m triserve_gateway``: serve the gateway's three listeners with uvicorn.

uvloop + httptools, access log off; settings from ``TRISERVE_GATEWAY_*`` (see
:mod:`triserve_gateway.settings`). A bad setting or routing file exits with one clear line. With
more than one process (``TRISERVE_GATEWAY_WORKERS``, by default one per usable CPU, at most 4) this process
is the primary of several (:mod:`triserve_gateway.workers`);
the app is imported only once :func:`~triserve_gateway.workers.prepare` has set prometheus-client's
multiprocess directory.
"""

from __future__ import annotations

import shutil
import sys

from fastapi import FastAPI

from triserve_common.server import run_service
from triserve_gateway.settings import GatewaySettings
from triserve_gateway.workers import prepare, serve_gateway


def _create_app(settings: GatewaySettings) -> FastAPI:
    role = prepare(settings)
    from triserve_gateway.app import create_app

    try:
        app = create_app(settings, role=role)
    except BaseException:
        if role.run_dir is not None:
            shutil.rmtree(role.run_dir, ignore_errors=True)
        raise
    app.state.role = role
    return app


def _serve(app: FastAPI, settings: GatewaySettings) -> None:
    serve_gateway(app, settings, app.state.role)


def main() -> int:
    """Entry point of the ``triserve-gateway`` console script."""
    return run_service("triserve-gateway", GatewaySettings, _create_app, _serve)


if __name__ == "__main__":
    sys.exit(main())
