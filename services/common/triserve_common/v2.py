"""Open Inference Protocol (KServe v2) REST schemas.

See https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ .
Tensor ``data`` stays ``Any`` here: the codec turns it into numpy arrays (and binary
tensors never pass through these models at all). Request models are strict: a field of the wrong
JSON type (a string shape, a numeric name, ``"shape": [1.0]``) is a 400, never coerced.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Parameters = dict[str, Any]


class _V2Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class _V2Request(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=(), strict=True)


class ServerMetadataResponse(_V2Model):
    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)


class MetadataTensor(_V2Model):
    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None


class MetadataModelResponse(_V2Model):
    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[MetadataTensor] = Field(default_factory=list)
    outputs: list[MetadataTensor] = Field(default_factory=list)
    parameters: Parameters | None = None


class RequestInput(_V2Request):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class RequestOutput(_V2Request):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_V2Request):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_V2Model):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class InferenceResponse(_V2Model):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(_V2Model):
    error: str


# ------------------------------------------------------------------ model repository extension
# https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_model_repository.md


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RepositoryIndexRequest(_Strict):
    """``POST /v2/repository/index`` body (optional): ``ready`` = only the versions ready to serve."""

    ready: bool = False


class RepositoryIndexEntry(_V2Model):
    """One model version of the repository index."""

    name: str
    version: str | None = None
    state: str | None = None
    reason: str | None = None


class LoadParameters(_Strict):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    """``parameters`` of a load request (Triton's ``config`` / ``file:`` overrides are not taken)."""

    version: str | None = None
    """The version to load (default: the highest in the store)."""
    instance_count: int | None = Field(default=None, ge=1)
    """Concurrent executions of this version (the service's workers / predictors by default)."""


class UnloadParameters(_Strict):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    """``parameters`` of an unload request."""

    version: str | None = None
    """The version to unload (default: every loaded version)."""
    unload_dependents: bool = False
    """Triton's flag; accepted, nothing here depends on another model."""


class RepositoryLoadRequest(_Strict):
    """``POST /v2/repository/models/{m}/load`` body (optional)."""

    parameters: LoadParameters = Field(default_factory=LoadParameters)


class RepositoryUnloadRequest(_Strict):
    """``POST /v2/repository/models/{m}/unload`` body (optional)."""

    parameters: UnloadParameters = Field(default_factory=UnloadParameters)
