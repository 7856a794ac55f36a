"""The benchmark's wrk Lua response check, against canned answers in every format a path returns.

Real ``wrk`` runs against a fixed-reply server; each format must count every answer as right when the
expected digit is the one it names, and every answer as wrong otherwise, so a path that answers
garbage (or the wrong digit) under load cannot pass the benchmark.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.encode import npy
from tests.support.procs import ServiceProcess, free_port
from triserve_cli.bench import wrk
from triserve_cli.bench.trivial import reply_bytes
from triserve_common import codec

pytestmark = pytest.mark.slow

LOGITS = np.array([[0.1, -2.0, 0.3, 1.0, -1.0, 0.0, 0.2, 5.0, 0.4, 0.5]], dtype=np.float32)  # names a 7


def _v2(binary: bool) -> bytes:
    body, headers = codec.encode_response("mnist", "1", None, {"logits": LOGITS}, binary=binary)
    return reply_bytes(body, headers)


CANNED: dict[str, tuple[wrk.Answer, bytes]] = {
    "text": ("text", reply_bytes(b"7")),
    "npy": ("npy", reply_bytes(npy(LOGITS), {"content-type": "application/octet-stream"})),
    "v2-binary": ("v2", _v2(binary=True)),
    "v2-json": ("v2", _v2(binary=False)),
}

SERVE = (
    "import sys, uvloop; from triserve_cli.bench.trivial import serve; "
    "uvloop.run(serve(int(sys.argv[1]), open(sys.argv[2], 'rb').read()))"
)


class CannedServer(ServiceProcess):
    """A fixed-reply server; ready once it accepts connections (its reply may be a 503)."""

    def __init__(self, reply: bytes, folder: Path) -> None:
        self.port = free_port()
        reply_path = folder / f"reply-{self.port}"
        reply_path.write_bytes(reply)
        argv = [sys.executable, "-c", SERVE, str(self.port), str(reply_path)]
        super().__init__("canned", argv, f"http://127.0.0.1:{self.port}/", folder, timeout=30)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"canned server not listening:\n{self.log_tail()}")


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[tuple[Path, list[ServiceProcess]]]:
    started: list[ServiceProcess] = []
    yield tmp_path, started
    for proc in started:
        proc.stop()


Canned = tuple[Path, list[ServiceProcess]]


def _run(answer: wrk.Answer, reply: bytes, expected: int, canned: Canned) -> wrk.WrkResult:
    folder, started = canned
    server = CannedServer(reply, folder)
    started.append(server)  # stopped by the fixture even when it never became ready
    server.start()
    url = server.ready_url + "v2/models/mnist/infer"
    request = wrk.Request("POST", url, b"{}", {"content-type": "application/json"}, answer, expected)
    return wrk.run(wrk.write_script(request, folder, "check"), url, connections=2, duration_s=1)


@pytest.mark.parametrize("fmt", sorted(CANNED))
def test_right_digit_counts_no_error(fmt: str, canned: Canned) -> None:
    answer, reply = CANNED[fmt]
    result = _run(answer, reply, 7, canned)
    assert result.requests > 100
    assert result.errors == 0, result


@pytest.mark.parametrize("fmt", sorted(CANNED))
def test_wrong_digit_counts_every_answer(fmt: str, canned: Canned) -> None:
    answer, reply = CANNED[fmt]
    result = _run(answer, reply, 3, canned)
    assert result.requests > 100
    assert result.bad_body == result.requests, result
    assert result.errors == result.requests
    assert result.sample.startswith("200 ")


def test_non_2xx_counts_as_bad_status(canned: Canned) -> None:
    reply = reply_bytes(
        b'{"error": "overloaded"}', {"content-type": "application/json"}, "503 Service Unavailable"
    )
    result = _run("v2", reply, 7, canned)
    assert result.requests > 100
    assert result.bad_status == result.requests, result
    assert result.sample.startswith("503 ")


def test_answers_are_counted_per_x_backend(canned: Canned) -> None:
    """The routing split under load: every answer's ``X-Backend`` is counted (none without the header)."""
    result = _run("text", reply_bytes(b"7", {"x-backend": "onnx"}), 7, canned)
    assert result.requests > 100 and result.errors == 0
    assert result.backends == {"onnx": result.requests}, result
    assert _run("text", reply_bytes(b"7"), 7, canned).backends == {}


def test_v2_binary_with_an_extra_output_is_wrong(canned: Canned) -> None:
    """Binary logits must be exactly the 10 floats after the header: anything else is not trusted."""
    body, headers = codec.encode_response(
        "mnist", "1", None, {"logits": LOGITS, "extra": LOGITS}, binary=True
    )
    result = _run("v2", reply_bytes(body, headers), 7, canned)
    assert result.bad_body == result.requests > 100


def test_parse_output_reads_the_done_line() -> None:
    line = (
        wrk.MARKER + '{"requests":10,"duration_us":2000000,"bytes":1,"connect":0,"read":1,"write":0,'
        '"status":0,'
        '"timeout":2,"bad_status":3,"bad_body":4,"min_us":100,"mean_us":150.5,"max_us":900,'
        '"p50_us":1500,"p90_us":2000,"p95_us":2500,"p99_us":9000,"sample":"503 x"}'
    )
    result = wrk.parse_output("Running 2s test\n" + line + "\n")
    assert result.rps == 5.0
    assert (result.p50_ms, result.p99_ms) == (1.5, 9.0)
    assert result.errors == 1 + 2 + 3 + 4
    with pytest.raises(wrk.WrkError):
        wrk.parse_output("no result")
