"""Run a FastAPI app with uvicorn the same way in every service."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from triserve_common.settings import ServiceSettings


def configure_logging(level: str) -> None:
    """One-line log records on stderr."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve ``app`` on the settings' host/port (uvloop, httptools, no access log, graceful stop)."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        timeout_keep_alive=75,
        backlog=4096,
    )
