"""Corpus categories about the body itself: images (every accepted format broken every way),
decompression bombs, animations, multipart, oversized bodies and Content-Lengths that lie."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

from PIL import Image

from tests.hostile.cases import INFER, PREDICT, TRANSPORTS, Answer, Case, image_case, multipart, raw_request
from tests.hostile.images import FORMATS, animated, bombs, corruptions, sample_image, truncations
from tests.support.encode import image_bytes

MAX_BODY = 8 * 1024 * 1024
"""The gateway's default TRISERVE_GATEWAY_MAX_BODY_BYTES."""
UNDECODABLE = ("could not be decoded", "not an image", "empty", "no pixels", "pixels")


def images(scale: int) -> list[Case]:
    """Zero-byte, truncated and corrupted images of every accepted format, over every transport."""
    cases = []
    fractions = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)[: 4 + 3 * min(scale, 1)]
    k = 0
    for transport in TRANSPORTS:
        cases.append(image_case("images", "zero bytes", b"", transport, statuses=(415,), names=("empty",)))
    for fmt in FORMATS:
        for seed in range(scale):
            data = image_bytes(sample_image(seed), fmt)
            for label, cut in truncations(data, fractions):
                transport = TRANSPORTS[k % len(TRANSPORTS)]
                k += 1
                cases.append(image_case("images", f"{fmt} {label}", cut, transport, names=UNDECODABLE))
            for label, bad in corruptions(data, range(seed * 8, seed * 8 + 6)):
                transport = TRANSPORTS[k % len(TRANSPORTS)]
                k += 1
                cases.append(
                    image_case("images", f"{fmt} {label}", bad, transport, names=UNDECODABLE, ok=True)
                )
    refused = {
        "ICO": image_bytes(Image.new("RGB", (16, 16)), "ICO"),
        "PPM": image_bytes(Image.new("L", (28, 28)), "PPM"),
        "PCX": image_bytes(Image.new("L", (28, 28)), "PCX"),
        "TGA": image_bytes(Image.new("L", (28, 28)), "TGA"),
        "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"/>',
        "PDF": b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF",
        "HTML": b"<html><body>7</body></html>",
        "NPY (TorchServe's own input, not for the gateway)": b"\x93NUMPY\x01\x00v\x00" + b" " * 118,
    }
    for transport in TRANSPORTS:
        for fmt, data in refused.items():
            cases.append(
                image_case(
                    "images",
                    f"{fmt} (not accepted)",
                    data,
                    transport,
                    statuses=(415,),
                    names=("accepted", "TRISERVE_GATEWAY_IMAGE_FORMATS"),
                )
            )
    return cases


def decompression_bombs() -> list[Case]:
    """Tiny files declaring more pixels than allowed: per image, and per request together."""
    cases = []
    for i, (label, data) in enumerate(bombs()):
        transport = TRANSPORTS[i % len(TRANSPORTS)]
        cases.append(
            image_case(
                "bombs", label, data, transport, statuses=(413,), names=("TRISERVE_GATEWAY_MAX_IMAGE_PIXELS",)
            )
        )
    from tests.hostile.images import bomb

    for fmt in FORMATS:  # each image under the per-image limit, together over the request's
        parts = [bomb(fmt, 3000, 3000) for _ in range(4)]
        body, headers = multipart(*parts)
        cases.append(
            Case(
                "bombs",
                f"4 x {fmt} 3000x3000 in one request",
                "POST",
                PREDICT,
                body,
                headers,
                statuses=(413,),
                names=("TRISERVE_GATEWAY_MAX_REQUEST_PIXELS",),
            )
        )
    return cases


def animations(digit_png: bytes, label: int) -> list[Case]:
    """Animated images whose first frame is a digit: answered by that frame alone."""
    first = Image.open(io.BytesIO(digit_png))
    cases = []
    for fmt, frames in (("GIF", 5000), ("GIF", 1000), ("PNG", 1000), ("WEBP", 500), ("TIFF", 300)):
        data = animated(fmt, first, frames)
        cases.append(
            Case(
                "animations",
                f"{fmt} {frames} frames, {len(data)} bytes [raw]",
                "PUT",
                PREDICT,
                data,
                label=label,
            )
        )
        body, headers = multipart(data, data)
        cases.append(
            Case(
                "animations",
                f"{fmt} {frames} frames twice [multipart]",
                "POST",
                PREDICT,
                body,
                headers,
                ok=True,
                check=_labels(label, 2),
            )
        )
    return cases


def _labels(label: int, count: int) -> Callable[[Answer], str | None]:
    def check(answer: Answer) -> str | None:
        return None if json.loads(answer.body) == [label] * count else f"answered {answer.body[:60]!r}"

    return check


def multipart_cases(digit_png: bytes) -> list[Case]:
    """Malformed forms, forms over the part limit, good and bad parts mixed."""
    good, ctype = multipart(digit_png)
    b = "hostile-boundary"
    cases = [
        Case(
            "multipart",
            "no boundary",
            "POST",
            PREDICT,
            good,
            {"Content-Type": "multipart/form-data"},
            statuses=(400,),
            names=("multipart",),
        ),
        Case(
            "multipart",
            "other boundary",
            "POST",
            PREDICT,
            good,
            {"Content-Type": "multipart/form-data; boundary=nope"},
            statuses=(400,),
            names=("multipart",),
        ),
        Case("multipart", "unterminated", "POST", PREDICT, good[:-30], ctype, names=("multipart",)),
        Case("multipart", "empty body", "POST", PREDICT, b"", ctype, statuses=(400,), names=("file part",)),
        Case(
            "multipart",
            "text fields only",
            "POST",
            PREDICT,
            f'--{b}\r\nContent-Disposition: form-data; name="x"\r\n\r\n7\r\n--{b}--\r\n'.encode(),
            ctype,
            statuses=(400,),
            names=("file part",),
        ),
        Case(
            "multipart",
            "part without name",
            "POST",
            PREDICT,
            f"--{b}\r\nContent-Disposition: form-data\r\n\r\n7\r\n--{b}--\r\n".encode(),
            ctype,
            statuses=(400,),
            names=("multipart",),
        ),
        Case(
            "multipart",
            "part without headers",
            "POST",
            PREDICT,
            f"--{b}\r\n\r\n7\r\n--{b}--\r\n".encode(),
            ctype,
            statuses=(400,),
            names=("multipart",),
        ),
        Case(
            "multipart",
            "header never ends",
            "POST",
            PREDICT,
            f"--{b}\r\nContent-Disposition: form-data; name=".encode() + b"x" * 20000,
            ctype,
            statuses=(400,),
            names=("multipart",),
        ),
        Case(
            "multipart",
            "JSON body labelled multipart",
            "POST",
            PREDICT,
            b'{"data": 1}',
            ctype,
            statuses=(400,),
            names=("multipart",),
        ),
        Case(
            "multipart",
            "65 parts (limit 64)",
            "POST",
            PREDICT,
            *multipart(*[digit_png] * 65),
            statuses=(413,),
            names=("TRISERVE_GATEWAY_MAX_IMAGES_PER_REQUEST",),
        ),
        Case(
            "multipart",
            "2000 tiny parts",
            "POST",
            PREDICT,
            *multipart(*[b"x"] * 2000),
            statuses=(413,),
            names=("TRISERVE_GATEWAY_MAX_IMAGES_PER_REQUEST",),
        ),
        Case(
            "multipart",
            "good, empty, good",
            "POST",
            PREDICT,
            *multipart(digit_png, b"", digit_png),
            statuses=(415,),
            names=("form part 1",),
        ),
        Case(
            "multipart",
            "good, text, good",
            "POST",
            PREDICT,
            *multipart(digit_png, b"seven", digit_png),
            statuses=(415,),
            names=("form part 1",),
        ),
        Case(
            "multipart",
            "good, truncated",
            "POST",
            PREDICT,
            *multipart(digit_png, digit_png[:40]),
            statuses=(415, 422),
            names=("form part 1",),
        ),
        Case(
            "multipart",
            "good, cut in half",
            "POST",
            PREDICT,
            *multipart(digit_png, digit_png[: len(digit_png) // 2]),
            statuses=(422,),
            names=("form part 1",),
        ),
    ]
    nested_inner, inner_type = multipart(digit_png, boundary="inner")
    nested = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="data"; filename="n"\r\n'
            f"Content-Type: {inner_type['Content-Type']}\r\n\r\n"
        ).encode()
        + nested_inner
        + f"\r\n--{b}--\r\n".encode()
    )
    cases.append(
        Case(
            "multipart",
            "nested multipart",
            "POST",
            PREDICT,
            nested,
            ctype,
            statuses=(415,),
            names=("accepted",),
        )
    )
    return cases


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    while total > 0:
        yield b"\0" * min(size, total)
        total -= size


def bodies(base: str) -> list[Case]:
    """Bodies over the limit, declared (Content-Length) or streamed (chunked), on both APIs."""
    cases = []
    for path, method in ((PREDICT, "PUT"), (INFER, "POST"), ("/predictions/mnist/1", "POST")):
        head = {"Content-Length": str(MAX_BODY + 1), "Content-Type": "application/octet-stream"}
        cases.append(
            Case(
                "bodies",
                f"declared {MAX_BODY + 1} bytes, 1 KiB sent {method} {path}",
                method,
                path,
                raw=raw_request(base, method, path, head, b"\0" * 1024),
                statuses=(413,),
                names=("TRISERVE_GATEWAY_MAX_BODY_BYTES",),
            )
        )
        cases.append(
            Case(
                "bodies",
                f"declared 10**18 bytes {method} {path}",
                method,
                path,
                raw=raw_request(base, method, path, {"Content-Length": str(10**18)}, b""),
                statuses=(413,),
                names=("MAX_BODY_BYTES",),
            )
        )
        cases.append(
            Case(
                "bodies",
                f"streamed {MAX_BODY + 1} bytes chunked {method} {path}",
                method,
                path,
                _chunks(MAX_BODY + 1),
                statuses=(413,),
                names=("TRISERVE_GATEWAY_MAX_BODY_BYTES",),
            )
        )
    for kind, item in (("numbers", b"0.123"), ("strings", b'"ab"')):  # Python objects: 10-20x the text
        n = (MAX_BODY - 200) // (len(item) + 1)
        data = b",".join([item] * n)
        dt = b"FP32" if kind == "numbers" else b"BYTES"
        body = (
            b'{"inputs":[{"name":"input","datatype":"' + dt + b'","shape":[%d],"data":[' % n + data + b"]}]}"
        )
        cases.append(
            Case(
                "bodies",
                f"JSON of {n} {kind} under the body limit",
                "POST",
                INFER,
                body,
                statuses=(413,),
                names=("TRISERVE_GATEWAY_MAX_ROWS_PER_REQUEST",),
            )
        )
    form, ctype = multipart(b"\0" * (MAX_BODY // 2), b"\0" * (MAX_BODY // 2))
    head = {**ctype, "Content-Length": str(len(form))}
    cases.append(
        Case(
            "bodies",
            "multipart over the limit, 64 KiB sent",
            "POST",
            PREDICT,
            raw=raw_request(base, "POST", PREDICT, head, form[: 1 << 16]),
            statuses=(413,),
            names=("TRISERVE_GATEWAY_MAX_BODY_BYTES",),
        )
    )
    return cases


def lying_lengths(base: str, digit_png: bytes) -> list[Case]:
    """Content-Length larger than the body (the client then goes away) or smaller than it."""
    cases = []
    for path, method, body in ((PREDICT, "PUT", digit_png), (INFER, "POST", b'{"inputs": []}')):
        for declared in (len(body) + 1, len(body) * 2, MAX_BODY):
            raw = raw_request(base, method, path, {"Content-Length": str(declared)}, body)
            cases.append(
                Case(
                    "lying-length",
                    f"declares {declared}, sends {len(body)} then leaves {path}",
                    method,
                    path,
                    raw=raw,
                    close_after_send=True,
                    no_answer_ok=True,
                )
            )
        for declared in (1, len(body) // 2, len(body) - 1):
            raw = raw_request(base, method, path, {"Content-Length": str(declared)}, body)
            cases.append(
                Case(
                    "lying-length",
                    f"declares {declared}, sends {len(body)} {path}",
                    method,
                    path,
                    raw=raw,
                    names=("could not be decoded", "not an image", "JSON", "invalid"),
                    parser_level=True,
                )
            )  # the undeclared rest is a second, non-HTTP request
    return cases


def http_parser(base: str, digit_png: bytes) -> list[Case]:
    """Bytes that are not valid HTTP: refused by uvicorn's parser with a plain 400, never a 5xx."""
    raws = {
        "DEL in a header value": raw_request(
            base, "PUT", PREDICT, {"X-Request-Id": "\x7f", "Content-Length": str(len(digit_png))}, digit_png
        ),
        "Content-Length abc": raw_request(base, "PUT", PREDICT, {"Content-Length": "abc"}, digit_png),
        "Content-Length -1": raw_request(base, "PUT", PREDICT, {"Content-Length": "-1"}, digit_png),
        "two different Content-Lengths": raw_request(
            base, "PUT", PREDICT, {"Content-Length": "5, 6"}, digit_png
        ),
        "chunked with a bad chunk size": raw_request(
            base, "PUT", PREDICT, {"Transfer-Encoding": "chunked"}, b"zz\r\n" + digit_png
        ),
        "header without colon": b"PUT /predictions/mnist HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        "NUL in the path": b"GET /ping\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200),
    }
    return [
        Case("http-parser", name, "PUT", PREDICT, raw=raw, parser_level=True, no_answer_ok=True)
        for name, raw in raws.items()
    ]
