"""deploy/docker/healthcheck.py: the containers' health check resolves the port the way the service does."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import ModuleType

import pytest

from tests.deploy.project import REPO, TORCHSERVE_CONFIG, environ, torchserve_config_ports


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "healthcheck", REPO / "deploy" / "docker" / "healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/v2/health/ready" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_settings_mode_reads_the_port_from_the_service_settings(server: int) -> None:
    env = {"TRISERVE_ONNX_HOST": "0.0.0.0", "TRISERVE_ONNX_PORT": str(server)}
    with environ(env):
        url = healthcheck.resolve(["settings", "triserve_onnx.settings:OnnxSettings", "/v2/health/ready"])
        assert url == f"http://127.0.0.1:{server}/v2/health/ready"
        assert healthcheck.main(["settings", "triserve_onnx.settings:OnnxSettings", "/v2/health/ready"]) == 0
        assert healthcheck.main(["settings", "triserve_onnx.settings:OnnxSettings", "/v2/health/live"]) == 1


def test_properties_mode_reads_torchserve_config() -> None:
    url = healthcheck.url_from_properties(TORCHSERVE_CONFIG.read_text(), "inference_address", "/ping")
    assert url == f"http://127.0.0.1:{torchserve_config_ports()['inference']}/ping"
    rendered = "inference_address=http://127.0.0.1:1\ninference_address=http://0.0.0.0:9080\n"
    assert (
        healthcheck.url_from_properties(rendered, "inference_address", "/ping")
        == "http://127.0.0.1:9080/ping"
    )


def test_unreachable_is_unhealthy() -> None:
    assert healthcheck.probe("http://127.0.0.1:9/none", timeout_s=0.5) is False
