"""One hostile request, how it is sent, and what counts as the right answer to it.

A :class:`Case` is sent with httpx, or — for what httpx refuses to send (a Content-Length that
lies, a body cut off by a disconnect) — as raw bytes on a socket, the answer parsed with h11.
:func:`verdict` judges the answer: never 5xx; a 4xx is JSON in the API's error shape whose
message names the problem; a 200 only where the case allows one (then with the right label).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import httpx

from tests.support.encode import v2_images, v2_request
from triserve_common import codec

PREDICT = "/predictions/mnist"
PARSER_400 = b"Invalid HTTP request received."
"""uvicorn's answer to bytes its HTTP parser rejects."""
INFER = "/v2/models/mnist/infer"


@dataclass(frozen=True)
class Answer:
    status: int | None
    """None: the connection ended without an answer (a client that disconnected gets none)."""
    headers: dict[str, str]
    body: bytes


@dataclass
class Case:
    category: str
    name: str
    method: str = "PUT"
    path: str = PREDICT
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    """The error message must contain one of these (case-insensitive); empty: any message."""
    statuses: tuple[int, ...] = ()
    """Allowed error statuses; empty: any 4xx."""
    ok: bool = False
    """A 200 is a right answer too (e.g. a corrupted image that still decodes)."""
    label: int | None = None
    """When set, the case must be answered 200 with this label (TorchServe API)."""
    raw: bytes | None = None
    """Send these bytes on a socket instead of an httpx request (then ``no_answer_ok`` may apply)."""
    check: Callable[[Answer], str | None] | None = None
    """A further check of a 200 answer (None when right, else why not)."""
    no_answer_ok: bool = False
    parser_level: bool = False
    """Bytes that are not HTTP reach uvicorn's parser: its plain-text 400 (below the app, so no
    JSON) is a right answer too."""
    close_after_send: bool = False
    """Half-close the socket after sending ``raw`` (a client that goes away mid-body)."""


def send(client: httpx.Client, base: str, case: Case) -> Answer:
    """Send ``case`` to the gateway at ``base``."""
    if case.raw is not None:
        return send_raw(base, case.raw, case.close_after_send)
    try:
        resp = client.request(case.method, base + case.path, content=case.body, headers=case.headers)
    except (httpx.LocalProtocolError, UnicodeEncodeError):  # a header httpx won't send (" 4 ", "ü")
        assert isinstance(case.body, bytes)
        headers = {**case.headers, "Content-Length": str(len(case.body))}
        return send_raw(base, raw_request(base, case.method, case.path, headers, case.body), False)
    return Answer(resp.status_code, dict(resp.headers), resp.content)


def send_raw(base: str, raw: bytes, close_after_send: bool, timeout: float = 30.0) -> Answer:
    """Write ``raw`` to a fresh connection and read one HTTP response with h11 (None if none)."""
    url = urlsplit(base)
    conn = h11.Connection(h11.CLIENT)
    # h11 only parses a response to a request it saw: tell it about one (the bytes sent are ``raw``)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", url.netloc)]))
    conn.send(h11.EndOfMessage())
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=timeout) as sock:
        sock.sendall(raw)
        if close_after_send:
            sock.shutdown(socket.SHUT_WR)
        status, headers, body = None, {}, b""
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                data = b""
            conn.receive_data(data)
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:  # closed without (a complete) answer
                    return Answer(status, headers, body)
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return Answer(status, headers, body)
            if not data:
                return Answer(status, headers, body)


def raw_request(base: str, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """An HTTP/1.1 request as bytes, headers exactly as given (Content-Length included or not)."""
    host = urlsplit(base).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _no_constant(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def error_message(path: str, answer: Answer) -> str:
    """The error's message in the API's shape (raises AssertionError when the shape is wrong)."""
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
    body = json.loads(answer.body)
    if path.startswith("/v2"):
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return str(body["error"])
    assert set(body) == {"code", "type", "message"} and body["code"] == answer.status, body
    return str(body["message"])


def verdict(case: Case, answer: Answer) -> str | None:
    """None when ``answer`` is right for ``case``, else why it is not."""
    if answer.status is None:
        return None if case.no_answer_ok else "no answer"
    if answer.status >= 500:
        return f"server error {answer.status}: {answer.body[:300]!r}"
    if answer.status == 200:
        if not (case.ok or case.label is not None):
            return f"accepted: 200 {answer.body[:120]!r}"
        if answer.headers.get("content-type", "").startswith("application/json"):
            try:  # strict JSON: no bare NaN/Infinity
                json.loads(answer.body, parse_constant=_no_constant)
            except ValueError as exc:
                return f"200 with invalid JSON ({exc}): {answer.body[:120]!r}"
        if case.label is not None and answer.body.strip() != str(case.label).encode():
            return f"wrong label {answer.body[:50]!r}, expected {case.label}"
        return case.check(answer) if case.check is not None else None
    if case.label is not None:
        return f"{answer.status} where label {case.label} was expected: {answer.body[:200]!r}"
    if case.parser_level and answer.status == 400 and answer.body == PARSER_400:
        return None
    if not 400 <= answer.status < 500 or (case.statuses and answer.status not in case.statuses):
        return f"status {answer.status} (expected {case.statuses or '4xx'}): {answer.body[:200]!r}"
    try:
        message = error_message(case.path, answer)
    except (AssertionError, ValueError) as exc:
        return f"{answer.status} is not a JSON error in the API's shape: {exc} {answer.body[:200]!r}"
    if case.names and not any(n.lower() in message.lower() for n in case.names):
        return f"{answer.status} message does not name {case.names}: {message[:300]!r}"
    return None


# ------------------------------------------------------------------ transports for one image


def multipart(*images: bytes, boundary: str = "hostile-boundary") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file part per image."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="{i}.img"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + img
        + b"\r\n"
        for i, img in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def v2_json_images(*images: bytes) -> bytes:
    """An OIP v2 JSON request with the images as one base64 BYTES input."""
    return json.dumps(v2_request(v2_images("image", images))).encode()


def v2_binary_images(*images: bytes) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 binary request with the images as one BYTES input."""
    payload = codec.pack_bytes(list(images))
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    ).encode()
    return head + payload, {codec.HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


TRANSPORTS = ("raw", "multipart", "v2-json", "v2-binary")


def image_case(category: str, name: str, data: bytes, transport: str, **kw: object) -> Case:
    """A case sending one image through ``transport`` (one of :data:`TRANSPORTS`)."""
    label = f"{name} [{transport}]"
    if transport == "raw":
        return Case(category, label, "PUT", PREDICT, data, {}, **kw)  # type: ignore[arg-type]
    if transport == "multipart":
        body, headers = multipart(data)
        return Case(category, label, "POST", PREDICT, body, headers, **kw)  # type: ignore[arg-type]
    if transport == "v2-json":
        return Case(category, label, "POST", INFER, v2_json_images(data), {}, **kw)  # type: ignore[arg-type]
    body, headers = v2_binary_images(data)
    return Case(category, label, "POST", INFER, body, headers, **kw)  # type: ignore[arg-type]


def unique_id() -> str:
    return uuid.uuid4().hex
