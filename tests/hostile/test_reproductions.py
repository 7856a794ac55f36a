"""The two reproductions of issue 10, against the real platform."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.hostile.cases import send_raw
from tests.hostile.conftest import BACKENDS, LivePlatform
from triserve_common import codec

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def test_three_latest_then_a_normal_request(live: LivePlatform) -> None:
    """``curl -T 0.png .../predictions/mnist/latest`` three times used to eject every backend."""
    png, label = live.digits.pngs[0], int(live.digits.labels[0])
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            r = client.put(f"{live.gateway}/predictions/mnist/latest", content=png)
            assert r.status_code == 404
            body = r.json()
            assert body["type"] == "ModelNotFoundException" and "versions: 1" in body["message"]
        r = client.put(f"{live.gateway}/predictions/mnist", content=png)
        assert r.status_code == 200 and r.text == str(label)
        for backend in BACKENDS:
            r = client.put(f"{live.gateway}/predictions/mnist", content=png, headers={"X-Backend": backend})
            assert r.status_code == 200 and r.text == str(label), (backend, r.text)
    assert live.backends_up() == {name: 1.0 for name in BACKENDS}
    assert httpx.get(f"{live.gateway}/v2/health/ready", timeout=10).status_code == 200


def test_150_byte_binary_request_declaring_a_huge_bytes_tensor(live: LivePlatform) -> None:
    """One BYTES input of shape [100000000] and 4 bytes of data used to make the gateway allocate
    ~800 MB and block its event loop for seconds."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [100_000_000],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    body = head + b"\0\0\0\0"
    host = urlsplit(live.gateway).netloc
    request = (
        f"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: {host}\r\n"
        f"{codec.HEADER_LENGTH}: {len(head)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    assert len(request) <= 300  # the request was 150 bytes of body and headers
    rss_before, _ = live.rss()
    peak_reset = live.reset_peak_rss()
    started = time.perf_counter()
    answer = send_raw(live.gateway, request, close_after_send=False)
    elapsed = time.perf_counter() - started
    rss_after, peak = live.rss()
    growth = (peak if peak_reset else rss_after) - rss_before
    print(
        f"\n150-byte request: {answer.status} in {elapsed * 1e3:.1f} ms, "
        f"gateway RSS {rss_before / MB:.1f} MB, "
        f"peak {(peak if peak_reset else rss_after) / MB:.1f} MB (growth {growth / MB:.2f} MB)"
    )
    assert answer.status is not None and 400 <= answer.status < 500
    assert "100000000" in json.loads(answer.body)["error"]
    assert growth < 20 * MB


def test_client_disconnect_mid_body_is_one_line_and_499(live: LivePlatform) -> None:
    before = live.metric("triserve_gateway_requests_total", status="499")
    url = urlsplit(live.gateway)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /predictions/mnist HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"\x89PNG" * 10
        )
    deadline = time.monotonic() + 10
    while live.metric("triserve_gateway_requests_total", status="499") <= before:
        assert time.monotonic() < deadline, "the disconnect was not counted under 499"
        time.sleep(0.1)
    assert live.metric("triserve_gateway_requests_total", status="500") == 0
    lines = [
        line for line in live.gateway_log().splitlines() if "client disconnected after 40 of 100000" in line
    ]
    assert len(lines) >= 1 and "Traceback" not in live.gateway_log()
