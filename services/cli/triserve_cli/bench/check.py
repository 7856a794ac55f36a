"""Correctness pre-check: before any load, every path must name the right digit for one image per class."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import httpx
import numpy as np

from triserve_cli.bench.paths import BenchPath
from triserve_cli.bench.payloads import Digit
from triserve_cli.bench.wrk import Answer
from triserve_common import codec
from triserve_common.errors import BadRequestError


def label_of(answer: Answer, content: bytes, header_length: str | None = None) -> int:
    """The digit a 2xx body names (-1 when it names none), decoded as the path answers.

    ``header_length``: the response's ``Inference-Header-Content-Length`` (binary OIP v2 answers).
    """
    try:
        if answer == "text":
            text = content.decode().strip().strip('"')
            return int(text) if text.isdigit() and len(text) == 1 else -1
        if answer == "npy":
            logits = np.load(io.BytesIO(content), allow_pickle=False)
        elif answer == "v2":
            length = codec.parse_header_length(header_length)
            logits = codec.decode_response(content, length).outputs["logits"]
        else:
            return -2  # "any": no digit to read
    except (ValueError, KeyError, json.JSONDecodeError, BadRequestError, UnicodeDecodeError):
        return -1
    return int(np.argmax(logits.reshape(-1))) if logits.size == 10 else -1


@dataclass(frozen=True)
class CheckResult:
    """One path's pre-check: the digits sent and the digits answered."""

    path: str
    labels: list[int]
    answers: list[int]
    failures: list[str]

    @property
    def ok(self) -> bool:
        """Every answer is 2xx and names its image's label."""
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "labels": self.labels,
            "answers": self.answers,
            "ok": self.ok,
            "failures": self.failures,
        }


def precheck(path: BenchPath, base_url: str, digits: list[Digit], retry_s: float = 120.0) -> CheckResult:
    """Send every digit once over ``path``; transient errors (connection, 503) are retried for ``retry_s``."""
    answers: list[int] = []
    failures: list[str] = []
    deadline = time.monotonic() + retry_s
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for digit in digits:
            body, headers = path.body(digit)
            while True:
                try:
                    response = client.request(path.method, path.endpoint, content=body, headers=headers)
                    if response.status_code != 503 or time.monotonic() > deadline:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.5)
            if not response.is_success:
                answers.append(-1)
                failures.append(f"image {digit.index}: HTTP {response.status_code} {response.text[:200]!r}")
                continue
            got = label_of(path.answer, response.content, response.headers.get(codec.HEADER_LENGTH))
            answers.append(got)
            if got != digit.label:
                failures.append(
                    f"image {digit.index} (a {digit.label}) answered {got}: {response.content[:200]!r}"
                )
    return CheckResult(path.name, [d.label for d in digits], answers, failures)
