"""A small ``multipart/form-data`` parser (no python-multipart dependency), for ``curl -F``."""

from __future__ import annotations

from dataclasses import dataclass

from triserve_common.errors import BadRequestError


@dataclass(frozen=True)
class FormPart:
    """One part: its form field name, file name (if a file) and content."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def _param(header_value: str, key: str) -> str | None:
    for item in header_value.split(";")[1:]:
        k, sep, v = item.strip().partition("=")
        if sep and k.strip().lower() == key:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            return v
    return None


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a multipart content type (400 if missing)."""
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise BadRequestError("multipart/form-data request without a boundary parameter")
    return boundary


def parse_multipart(body: bytes, content_type: str) -> list[FormPart]:
    """The parts of a ``multipart/form-data`` body, in order (400 when malformed)."""
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    if len(chunks) < 3:
        raise BadRequestError("malformed multipart/form-data body: boundary not found")
    parts: list[FormPart] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequestError("malformed multipart/form-data part: no header/body separator")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        parts.append(
            FormPart(
                name=_param(disposition, "name"),
                filename=_param(disposition, "filename"),
                content_type=headers.get("content-type"),
                data=data,
            )
        )
    else:
        raise BadRequestError("malformed multipart/form-data body: no closing boundary")
    return parts
