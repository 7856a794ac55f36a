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
