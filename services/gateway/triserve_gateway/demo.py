"""The web demo: a page served by the gateway itself, and the one endpoint it adds.

- ``GET /`` redirects to ``GET /demo/``: the page (``static/index.html``; script and style under
  ``/demo/static/``, all shipped inside this package: nothing is loaded from elsewhere, and the
  page's Content-Security-Policy says so). It calls the public APIs only: ``/demo/models``,
  ``/v2/models/{m}/versions/{v}``, ``/predictions/{m}/{v}?topk=5`` with ``X-Backend``,
  ``/explanations/{m}/{v}`` and the endpoints below.
- ``GET /demo/models``: what the page lists — each registered model's versions, default version,
  readiness, routing strategy and its backends' names, protocols and health; no URL and no error
  message (those are on the management API only).
- ``POST|PUT /demo/input/{model}[/{version}]``: the image the model receives after the gateway's
  preprocessing, as a PNG of the input's size (the manifest's width x height): the float tensor mapped back to
  8-bit pixels (``(x * std + mean) / scale``), so inversion and resizing show as the model sees them.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from triserve_common.server import model_target, read_body
from triserve_gateway import openapi_spec as spec
from triserve_gateway.api_common import service_of
from triserve_gateway.models import ModelVersion
from triserve_gateway.service import Payload

Array = np.ndarray[Any, Any]
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)


def input_png(mv: ModelVersion, x: Array) -> bytes:
    """One preprocessed image (float32 ``[1, C, H, W]``) as 8-bit PNG pixels (see module doc)."""
    spec = mv.preprocessor.spec
    channels = x.shape[1]
    mean = np.asarray(spec.mean * channels if len(spec.mean) == 1 else spec.mean, np.float32)
    std = np.asarray(spec.std * channels if len(spec.std) == 1 else spec.std, np.float32)
    pixels = (x[0] * std[:, None, None] + mean[:, None, None]) / np.float32(spec.scale)
    hwc = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    image = Image.fromarray(hwc[:, :, 0] if channels == 1 else hwc)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


async def root(request: Request) -> RedirectResponse:
    """``GET /`` and ``GET /demo``: to the page, query kept (``/?model=fashion`` opens that model)."""
    query = request.url.query
    return RedirectResponse("/demo/" + (f"?{query}" if query else ""), status_code=307)


async def page() -> FileResponse:
    """The demo page, with a Content-Security-Policy that allows this origin only."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
    )


async def model_input(request: Request) -> Response:
    """The preprocessed input of the image in the body, as a PNG (see module doc)."""
    start = time.perf_counter()
    service = service_of(request)
    model, version = model_target(request)
    mv = service.gateway.resolve(model, version).mv
    settings = service.settings
    body = await read_body(request, settings.max_body_bytes, settings.env_name("max_body_bytes"))
    x = await service.model_input(mv, Payload(images=[body], what="request body"))
    elapsed = time.perf_counter() - start
    return Response(
        input_png(mv, x),
        media_type="image/png",
        headers={
            "X-Model-Version": mv.version,
            "X-Input-Shape": ",".join(str(d) for d in x.shape),
            "Server-Timing": f"preprocess;dur={elapsed * 1e3:.3f}",
        },
    )


async def catalog(request: Request) -> JSONResponse:
    """The registered models as the page lists them (see module doc)."""
    gateway = service_of(request).gateway
    models = []
    for name in gateway.routed():
        versions = gateway.served_versions(name)
        if not versions:
            continue
        route = gateway.route(name)
        backends = [
            {"name": ref.name, "protocol": gateway.routing.backends[ref.name].protocol,
             "health": gateway.backends[ref.name].health_label()}
            for ref in route.backends
        ]
        models.append({
            "modelName": name, "modelVersion": gateway.catalog.default_version(name), "versions": versions,
            "ready": gateway.model_ready(name), "strategy": route.strategy, "backends": backends,
        })
    return JSONResponse({"models": models})


def register(app: FastAPI) -> None:
    """Add the demo page, its static files and ``/demo/input/...`` to ``app``."""
    app.add_api_route("/", root, methods=["GET"], tags=["Demo"], summary="Redirect to the web demo page",
                      responses=spec.redirect_responses())
    app.add_api_route("/demo", root, methods=["GET"], include_in_schema=False)
    app.add_api_route("/demo/", page, methods=["GET"], tags=["Demo"], summary="The web demo page",
                      responses=spec.html_responses())
    app.add_api_route("/demo/models", catalog, methods=["GET"], tags=["Demo"],
                      summary="Registered models, versions and backends (names and health only)",
                      responses=spec.ok(spec.DEMO_MODELS, "Models, versions and backends"))
    for path in ("/demo/input/{model_name}", "/demo/input/{model_name}/{model_version}"):
        app.add_api_route(  # one route for both methods: a 405 names them both in Allow
            path, model_input, methods=["POST", "PUT"], tags=["Demo"],
            summary="The preprocessed model input of an image, as a PNG",
            openapi_extra=spec.with_path(path, spec.image_request_body()), responses=spec.png_responses(),
        )
    app.mount("/demo/static", StaticFiles(directory=STATIC_DIR), name="demo-static")
