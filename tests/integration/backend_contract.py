"""What every runtime service (ONNX, Paddle) must do, checked against a REAL process.

A test module subclasses :class:`BackendContract` (named ``Test...``), sets the service's module,
env prefix, platform, engine and the artifact file to tamper with, and implements :meth:`direct`
(the same batch through the engine called in-process). The service runs on a free 127.0.0.1 port
with the committed model store; digits are cut from the MNIST t10k files at test time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.encode import v2_input, v2_request, v2_tensor
from tests.support.mnist import Digits, held_out
from tests.support.procs import ServiceProcess, free_port, python_exe
from triserve_common import codec
from triserve_common.manifest import Manifest, read_manifest

MAX_BODY = 1 << 20
"""Body limit the services are started with (a 256-image binary batch is ~800 KB)."""


@dataclass
class Running:
    """A started service and the store it serves."""

    proc: ServiceProcess
    url: str
    manifest: Manifest
    store: Path


def infer_binary(url: str, x: np.ndarray, **headers: str) -> tuple[httpx.Response, np.ndarray]:
    body, head = codec.encode_request({"input": x}, outputs=["logits"])
    resp = httpx.post(f"{url}/v2/models/mnist/infer", content=body, headers={**head, **headers}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == codec.BINARY_CONTENT_TYPE
    decoded = codec.decode_response(resp.content, int(resp.headers[codec.HEADER_LENGTH]))
    return resp, decoded.outputs["logits"]


def infer_json(url: str, x: np.ndarray) -> np.ndarray:
    resp = httpx.post(f"{url}/v2/models/mnist/infer", json=v2_request(v2_tensor("input", x)), timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    out = resp.json()["outputs"][0]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [len(x), 10]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def request_count(url: str, model: str, status: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "triserve_inference_requests":
            return sum(
                sample.value for sample in family.samples
                if sample.name.endswith("_total") and sample.labels["model"] == model
                and sample.labels["status"] == status
            )
    return 0.0


def json_input(shape: list[int], datatype: str = "FP32", name: str = "input") -> bytes:
    return json.dumps(v2_request(v2_input(name, shape, datatype))).encode()


def _binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return codec.encode_request({"input": x})


def _error_cases() -> list[tuple[str, str, bytes, dict[str, str], int, str]]:
    """(id, path, body, headers, status, fragment of the error message)."""
    infer = "/v2/models/mnist/infer"
    ok_json = json_input([1, 1, 28, 28])
    body, head = _binary(np.zeros((2, 1, 28, 28), np.float32))
    return [
        ("unknown-model", "/v2/models/resnet/infer", ok_json, {}, 404, "model 'resnet' not found"),
        ("unknown-version", "/v2/models/mnist/versions/99/infer", ok_json, {}, 404, "version '99'"),
        (
            "wrong-name",
            infer,
            json_input([1, 1, 28, 28], name="image"),
            {},
            400,
            "unexpected input 'image': model 'mnist' expects inputs ['input'], received ['image']",
        ),
        (
            "wrong-shape",
            infer,
            json_input([1, 28, 28]),
            {},
            400,
            "input 'input': shape [1, 28, 28] does not match the model's [-1, 1, 28, 28]",
        ),
        ("wrong-channels", infer, json_input([1, 3, 28, 28]), {}, 400, "shape [1, 3, 28, 28] does not match"),
        (
            "wrong-dtype",
            infer,
            json_input([1, 1, 28, 28], "FP64"),
            {},
            400,
            "input 'input': datatype FP64 does not match the model's FP32",
        ),
        ("malformed-json", infer, b'{"inputs": [', {}, 400, "request body is not valid JSON"),
        ("not-an-object", infer, b"[]", {}, 400, "invalid inference request"),
        ("header-not-int", infer, body, {**head, codec.HEADER_LENGTH: "12x"}, 400, "must be an integer"),
        (
            "header-too-long",
            infer,
            body,
            {**head, codec.HEADER_LENGTH: str(len(body) + 5)},
            400,
            "larger than the body",
        ),
        ("header-cuts-json", infer, body, {**head, codec.HEADER_LENGTH: "10"}, 400, "not valid JSON"),
        ("binary-truncated", infer, body[:-100], head, 400, "binary data truncated"),
        ("oversize", infer, b"0" * (MAX_BODY + 1), {}, 413, f"exceeds the limit of {MAX_BODY} bytes"),
    ]


ERROR_CASES = _error_cases()


class BackendContract:
    """Integration checks shared by the runtime services (subclass as ``Test<Backend>Service``)."""

    module: ClassVar[str]
    """``python -m`` module of the service."""
    env_prefix: ClassVar[str]
    platform: ClassVar[str]
    engine: ClassVar[str]
    """Engine the service must report on this (CPU) machine."""
    tamper_file: ClassVar[str]
    """Artifact file (relative to the version directory) to corrupt."""
    rtol: ClassVar[float] = 1e-5
    atol: ClassVar[float] = 1e-4

    def direct(self, version_dir: Path, x: np.ndarray) -> np.ndarray:
        """Logits of ``x`` from the engine called in-process."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fixtures

    @classmethod
    def command(cls) -> list[str]:
        return [python_exe(), "-m", cls.module]

    @classmethod
    def env(cls, store: Path, port: int, **extra: str) -> dict[str, str]:
        p = cls.env_prefix
        return {
            f"{p}PORT": str(port),
            f"{p}MODEL_STORE": str(store),
            # the contract is checked on the FP32 version (a request without a version gets the highest
            # loaded one, and the store also holds the INT8 mnist/2)
            f"{p}MODEL_VERSION": "1",
            f"{p}MAX_BODY_BYTES": str(MAX_BODY),
            f"{p}LOG_LEVEL": "info",
            **{f"{p}{k.upper()}": v for k, v in extra.items()},
        }

    @classmethod
    def start(cls, store: Path, log_dir: Path, name: str, **extra: str) -> Running:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = ServiceProcess(
            name, cls.command(), f"{url}/v2/health/ready", log_dir, env=cls.env(store, port, **extra)
        ).start()
        return Running(proc, url, read_manifest(store / "mnist" / "1"), store)

    @pytest.fixture(scope="class")
    @classmethod
    def service(cls, model_store: Path, service_logs: Path) -> Iterator[Running]:
        running = cls.start(model_store, service_logs, f"{cls.module}-contract")
        try:
            yield running
        finally:
            running.proc.stop()

    @pytest.fixture(scope="class")
    @classmethod
    def digits(cls, mnist_dir: Path, service: Running) -> Digits:
        """64 held-out t10k digits (never seen in training)."""
        return held_out(mnist_dir, service.manifest)[:64]

    # ------------------------------------------------------------------ tests

    def test_health_and_metadata_name_the_engine(self, service: Running) -> None:
        url = service.url
        assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
        assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
        assert httpx.get(f"{url}/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]
        for path in ("/v2/models/mnist", "/v2/models/mnist/versions/1"):
            meta = httpx.get(url + path).json()
            assert meta["name"] == "mnist" and meta["versions"] == ["1"] and meta["platform"] == self.platform
            assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
            assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
            assert meta["parameters"]["engine"] == self.engine
        ready = httpx.get(f"{url}/v2/models/mnist/versions/1/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        metrics = httpx.get(f"{url}/metrics").text
        assert f'engine="{self.engine}"' in metrics

    def test_predicts_the_digits(self, service: Running, digits: Digits) -> None:
        _, logits = infer_binary(service.url, digits.x)
        predicted = logits.argmax(axis=1)
        accuracy = float((predicted == digits.labels).mean())
        assert accuracy >= 0.95, f"accuracy {accuracy:.3f}: predicted {predicted}, labels {digits.labels}"
        # one digit at a time too (batch of 1)
        _, one = infer_binary(service.url, digits.x[:1])
        assert int(one.argmax()) == int(predicted[0])

    def test_json_and_binary_agree_with_a_direct_engine_call(self, service: Running, digits: Digits) -> None:
        x = digits.x[:8]
        _, from_binary = infer_binary(service.url, x)
        from_json = infer_json(service.url, x)
        np.testing.assert_array_equal(from_binary, from_json)
        expected = self.direct(service.store / "mnist" / "1", x)
        np.testing.assert_allclose(from_binary, expected, rtol=self.rtol, atol=self.atol)
        assert (from_binary.argmax(1) == expected.argmax(1)).all()

    def test_concurrent_requests_get_their_own_results(self, service: Running, digits: Digits) -> None:
        """Predictor pool / session shared by threads: no batch gets another's outputs."""
        batches = [digits.x[i : i + 1 + i % 5] for i in range(24)]
        expected = [infer_binary(service.url, b)[1] for b in batches]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda b: infer_binary(service.url, b)[1], batches))
        for got, want in zip(results, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=self.rtol, atol=self.atol)

    @pytest.mark.parametrize(
        ("path", "body", "headers", "status", "fragment"),
        [case[1:] for case in ERROR_CASES],
        ids=[case[0] for case in ERROR_CASES],
    )
    def test_client_errors(
        self, service: Running, path: str, body: bytes, headers: dict[str, str], status: int, fragment: str
    ) -> None:
        resp = httpx.post(service.url + path, content=body, headers=headers, timeout=30)
        assert resp.status_code == status, resp.text
        assert fragment in resp.json()["error"], resp.json()

    def test_oversize_streamed_body_is_413(self, service: Running) -> None:
        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                yield b"0" * (MAX_BODY // 4)

        resp = httpx.post(f"{service.url}/v2/models/mnist/infer", content=chunks(), timeout=30)
        assert "content-length" not in resp.request.headers
        assert resp.status_code == 413 and "exceeds the limit" in resp.json()["error"]

    def test_unknown_model_metadata_is_404(self, service: Running) -> None:
        for path in ("/v2/models/resnet", "/v2/models/mnist/versions/2", "/v2/models/mnist/versions/2/ready"):
            resp = httpx.get(service.url + path)
            assert resp.status_code == 404 and "not found" in resp.json()["error"]

    def test_metrics_count_requests(self, service: Running, digits: Digits) -> None:
        url = service.url
        ok0, bad0, unknown0 = (
            request_count(url, "mnist", "200"),
            request_count(url, "mnist", "400"),
            request_count(url, "_unknown", "404"),
        )
        for _ in range(3):
            infer_binary(url, digits.x[:4])
        httpx.post(f"{url}/v2/models/mnist/infer", content=b"{")
        httpx.post(f"{url}/v2/models/nope/infer", content=json_input([1, 1, 28, 28]))
        assert request_count(url, "mnist", "200") == ok0 + 3
        assert request_count(url, "mnist", "400") == bad0 + 1
        assert request_count(url, "_unknown", "404") == unknown0 + 1
        text = httpx.get(f"{url}/metrics").text
        assert 'triserve_inference_batch_size_bucket{le="4.0",model="mnist",version="1"}' in text
        assert "triserve_inference_request_duration_seconds_bucket" in text

    def test_request_id_is_echoed(self, service: Running, digits: Digits) -> None:
        resp, _ = infer_binary(service.url, digits.x[:1], **{"X-Request-Id": "req-42"})
        assert resp.headers["x-request-id"] == "req-42"
        bad = httpx.post(
            f"{service.url}/v2/models/mnist/infer", content=b"{", headers={"X-Request-Id": "bad-1"}
        )
        assert bad.status_code == 400 and bad.headers["x-request-id"] == "bad-1"

    def test_model_repository_loads_and_unloads_at_run_time(
        self, model_store: Path, service_logs: Path, digits: Digits
    ) -> None:
        """v2 repository extension: nothing loaded at start, load with 2 instances, serve, unload."""
        running = self.start(model_store, service_logs, f"{self.module}-repository", load_models="none")
        url, repo = running.url, f"{running.url}/v2/repository"
        one_zero = json_input([1, 1, 28, 28])
        try:
            index = httpx.post(f"{repo}/index").json()
            assert {"name": "mnist", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
            assert httpx.post(f"{repo}/index", json={"ready": True}).json() == []
            assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # serving, with nothing loaded
            assert httpx.post(f"{url}/v2/models/mnist/infer", content=one_zero).status_code == 404

            two = {"parameters": {"version": 1, "instance_count": 2}}
            load = httpx.post(f"{repo}/models/mnist/load", json=two, timeout=120)
            assert load.status_code == 200 and load.content == b"", load.text
            index = httpx.post(f"{repo}/index").json()
            (row,) = [r for r in index if (r["name"], r["version"]) == ("mnist", "1")]
            assert row["state"] == "READY" and row["instances"] == 2
            _, logits = infer_binary(url, digits.x[:8])
            expected = self.direct(model_store / "mnist" / "1", digits.x[:8])
            np.testing.assert_allclose(logits, expected, rtol=self.rtol, atol=self.atol)

            for path, body, status, fragment in (
                ("/models/resnet/load", {}, 404, "resnet"),
                ("/models/mnist/load", {"parameters": {"version": "99"}}, 404, "version '99'"),
                ("/models/mnist/load", {"parameters": {"config": "{}"}}, 400, "parameters.config"),
                ("/models/mnist/load", {"parameters": {"instance_count": 0}}, 400, "instance_count"),
                ("/models/resnet/unload", {}, 404, "resnet"),
                ("/index", {"ready": "maybe"}, 400, "ready"),
            ):
                resp = httpx.post(repo + path, json=body, timeout=30)
                assert resp.status_code == status and fragment in resp.json()["error"], (path, resp.text)

            # unloading waits for the request in flight (its body still arriving), which completes
            body, head = codec.encode_request({"input": digits.x[:4]}, outputs=["logits"])
            first_sent, resume = threading.Event(), threading.Event()
            results: dict[str, httpx.Response] = {}

            def slow_body() -> Iterator[bytes]:
                yield body[: len(body) // 2]
                first_sent.set()
                resume.wait(20)
                yield body[len(body) // 2 :]

            def infer() -> None:
                results["infer"] = httpx.post(f"{url}/v2/models/mnist/infer", content=slow_body(),
                                              headers=head, timeout=30)

            def unload() -> None:
                results["unload"] = httpx.post(f"{repo}/models/mnist/unload", timeout=30)

            request = threading.Thread(target=infer)
            request.start()
            assert first_sent.wait(10)
            time.sleep(0.3)  # the request has reached the service
            unloading = threading.Thread(target=unload)
            unloading.start()
            time.sleep(0.5)
            assert unloading.is_alive(), "unload returned while a request was in flight"
            resume.set()
            request.join(30)
            unloading.join(30)
            assert results["infer"].status_code == 200 and results["unload"].status_code == 200
            assert httpx.post(f"{url}/v2/models/mnist/infer", content=one_zero).status_code == 404
            assert httpx.post(f"{repo}/index", json={"ready": True}).json() == []
        finally:
            running.proc.stop()

    def test_graceful_shutdown_finishes_in_flight_request(
        self, model_store: Path, service_logs: Path, digits: Digits
    ) -> None:
        """SIGTERM while a request's body is still arriving: the request completes, then the process stops."""
        running = self.start(model_store, service_logs, f"{self.module}-shutdown")
        try:
            body, head = codec.encode_request({"input": digits.x[:16]}, outputs=["logits"])
            first_sent, resume = threading.Event(), threading.Event()
            result: dict[str, object] = {}

            def slow_body() -> Iterator[bytes]:
                yield body[: len(body) // 2]
                first_sent.set()
                resume.wait(20)
                yield body[len(body) // 2 :]

            def client() -> None:
                try:
                    result["resp"] = httpx.post(
                        f"{running.url}/v2/models/mnist/infer", content=slow_body(), headers=head, timeout=30
                    )
                except Exception as exc:
                    result["error"] = exc

            thread = threading.Thread(target=client)
            thread.start()
            assert first_sent.wait(10)
            time.sleep(0.5)
            proc = running.proc.proc
            assert proc is not None
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(1.0)
            assert proc.poll() is None, "service exited with a request in flight"
            resume.set()
            thread.join(30)
            assert "error" not in result, result.get("error")
            resp = result["resp"]
            assert isinstance(resp, httpx.Response) and resp.status_code == 200, resp
            logits = codec.decode_response(resp.content, int(resp.headers[codec.HEADER_LENGTH])).outputs[
                "logits"
            ]
            assert (logits.argmax(1) == digits.labels[:16]).mean() >= 0.9
            # uvicorn re-raises the SIGTERM it handled once shut down: killed by SIGTERM is a clean stop
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
            log = running.proc.log_path.read_text()
            assert "Application shutdown complete" in log and "Traceback" not in log
        finally:
            running.proc.stop()

    def test_tampered_artifact_is_refused_at_start(self, model_store: Path, tmp_path: Path) -> None:
        store = tmp_path / "store"
        shutil.copytree(model_store / "mnist", store / "mnist")
        target = store / "mnist" / "1" / self.tamper_file
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        done = subprocess.run(
            self.command(),
            env={**os.environ, **self.env(store, free_port())},
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert str(target) in output and "sha256" in output and "refusing" in output, output
        assert "Traceback" not in output, output
        lines = [line for line in output.splitlines() if "cannot start" in line]
        assert len(lines) == 1, output
