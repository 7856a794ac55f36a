"""HTTP routes of the KServe v2 / Triton model repository extension, over any :class:`RepositoryBackend`.

::

    POST /v2/repository/index             {"ready": false}
                                          → [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/{m}/load   {"parameters": {"version": "2", "instance_count": 2}}
                                          → 200, empty body
    POST /v2/repository/models/{m}/unload {"parameters": {"version": "2"}}
                                          → 200, empty body

Bodies are optional (an empty body means the defaults). Failures are ``{"error": ...}`` with the
status of the :class:`~triserve_common.errors.TriserveError` (unknown model or version: 404;
a body that is not JSON or has unknown fields: 400 naming the field).
The runtime services serve their :class:`~triserve_common.repository.ModelRepository` with it; the
gateway serves its own implementation (load/unload on every backend) on its management port.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from triserve_common.errors import BadRequestError
from triserve_common.repository import ModelRepository
from triserve_common.server import read_body
from triserve_common.v2 import (
    LoadParameters,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    RepositoryUnloadRequest,
    UnloadParameters,
)

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 64 * 1024
"""Repository requests are tiny; anything bigger is refused (413)."""


class RepositoryBackend(Protocol):
    """What the routes need: an index, load and unload (async)."""

    async def repository_index(self, ready_only: bool) -> list[dict[str, Any]]: ...

    async def repository_load(self, name: str, params: LoadParameters) -> None: ...

    async def repository_unload(self, name: str, params: UnloadParameters) -> None: ...


class LocalRepository:
    """:class:`RepositoryBackend` of a runtime service: its own :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        return self.repository.index(ready_only)

    async def repository_load(self, name: str, params: LoadParameters) -> None:
        await self.repository.load(name, params.version, params.instance_count)

    async def repository_unload(self, name: str, params: UnloadParameters) -> None:
        if params.version is None:
            self.repository.get(name)  # 404 for a model that is not loaded at all
        else:
            self.repository.get(name, params.version)
        await self.repository.unload(name, params.version)


async def parse_body(request: Request, model: type[M]) -> M:
    """The optional JSON body as ``model`` (empty body → defaults); 400 naming what is wrong."""
    raw = await read_body(request, MAX_BODY_BYTES)
    if not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequestError(f"invalid repository request: {detail}") from None


def add_repository_routes(app: FastAPI, backend: RepositoryBackend) -> None:
    """Add the three repository routes of the module doc to ``app``."""
    tags: list[str | Enum] = ["Model repository (KServe v2 / Triton extension)"]

    async def index(request: Request) -> JSONResponse:
        body = await parse_body(request, RepositoryIndexRequest)
        return JSONResponse(await backend.repository_index(body.ready))

    async def load(model_name: str, request: Request) -> Response:
        body = await parse_body(request, RepositoryLoadRequest)
        await backend.repository_load(model_name, body.parameters)
        return Response(status_code=200)

    async def unload(model_name: str, request: Request) -> Response:
        body = await parse_body(request, RepositoryUnloadRequest)
        await backend.repository_unload(model_name, body.parameters)
        return Response(status_code=200)

    app.add_api_route("/v2/repository/index", index, methods=["POST"], tags=tags,
                      summary="Every model version in the repository, with its state")
    app.add_api_route("/v2/repository/models/{model_name}/load", load, methods=["POST"], tags=tags,
                      summary="Load (or reload) a model version")
    app.add_api_route("/v2/repository/models/{model_name}/unload", unload, methods=["POST"], tags=tags,
                      summary="Unload a model (or one version) once its in-flight requests finish")
