"""The gateway's KServe v2 gRPC endpoint in front of the REAL ONNX service, as ``triserve-gateway``
runs it (two processes sharing the gRPC port), with the generated ``grpc`` client.

Digits are cut from the MNIST t10k files at test time; answers are compared with the REST v2
endpoint's for the same tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest

from tests.support.grpc_v2 import fp32_request, images_request, outputs_of, pb, pb_grpc
from tests.support.mnist import Digits, one_per_digit
from tests.support.procs import ServiceProcess, python_exe
from tests.support.stack import onnx_for_gateway, start_gateway_on_a_held_port
from triserve_common import codec
from triserve_common.manifest import read_manifest
from triserve_common.ports import free_port

pytestmark = pytest.mark.integration

KEY = "grpc-inference-key"
AUTH = (("authorization", f"Bearer {KEY}"),)
MAX_BODY = 1 << 20


@dataclass
class Gateway:
    proc: ServiceProcess
    rest: str
    grpc_address: str
    grpc_port: int

    def stub(self, channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, model_store: Path) -> Digits:
    return one_per_digit(mnist_dir, read_manifest(model_store / "mnist" / "1"))


@pytest.fixture(scope="module")
def gateway(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("grpc")
    onnx, routing = onnx_for_gateway("onnx-grpc", logs, model_store, max_batch_size=16)
    port, grpc_port = free_port(), free_port()
    proc = ServiceProcess(
        "gateway-grpc", [python_exe(), "-m", "triserve_gateway"], f"http://127.0.0.1:{port}/v2/health/ready",
        logs,
        env={
            "TRISERVE_GATEWAY_WORKERS": "2",
            "TRISERVE_GATEWAY_PORT": str(port),
            "TRISERVE_GATEWAY_GRPC_PORT": str(grpc_port),
            "TRISERVE_GATEWAY_MANAGEMENT_PORT": str(free_port()),
            "TRISERVE_GATEWAY_METRICS_PORT": str(free_port()),
            "TRISERVE_GATEWAY_ROUTING_FILE": str(routing),
            "TRISERVE_GATEWAY_MODEL_STORE": str(model_store),
            "TRISERVE_GATEWAY_LOAD_MODELS": "mnist:1",
            "TRISERVE_GATEWAY_MANAGEMENT_KEY": "unused",
            "TRISERVE_GATEWAY_INFERENCE_KEY": KEY,
            "TRISERVE_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        },
    )
    with onnx, proc:
        yield Gateway(proc, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", grpc_port)


def listening_pids(port: int, root: int) -> set[int]:
    """The processes of the gateway's tree that listen on ``port``."""
    procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    return {
        p.pid for p in procs
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp"))
    }


def wait_both_listen(gateway: Gateway, timeout: float = 60.0) -> set[int]:
    import time

    assert gateway.proc.proc is not None
    deadline = time.monotonic() + timeout
    while len(pids := listening_pids(gateway.grpc_port, gateway.proc.proc.pid)) < 2:
        assert time.monotonic() < deadline, f"gRPC port served by {pids} only"
        time.sleep(0.2)
    return pids


def test_every_gateway_process_serves_grpc(gateway: Gateway, digits: Digits) -> None:
    assert gateway.proc.proc is not None
    pids = wait_both_listen(gateway)
    assert gateway.proc.proc.pid in pids
    for _ in range(6):  # new connections (the kernel picks the process per connection)
        with grpc.insecure_channel(gateway.grpc_address) as channel:
            stub = gateway.stub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            assert stub.ServerReady(pb.ServerReadyRequest()).ready
            answer = stub.ModelInfer(images_request([digits.pngs[3]]), metadata=AUTH, timeout=10)
            assert list(outputs_of(answer)["label"]) == [str(digits.labels[3]).encode()]


def test_pngs_and_tensors_answer_as_rest(gateway: Gateway, digits: Digits, model_store: Path) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        stub = gateway.stub(channel)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist"), metadata=AUTH)
        auth = {"Authorization": f"Bearer {KEY}"}
        rest_meta = httpx.get(f"{gateway.rest}/v2/models/mnist", headers=auth).json()
        assert (meta.name, list(meta.versions), meta.platform) == (
            rest_meta["name"], rest_meta["versions"], rest_meta["platform"]
        )
        assert [list(t.shape) for t in meta.inputs] == [t["shape"] for t in rest_meta["inputs"]]
        # every digit as a PNG (BYTES, raw as Triton's client sends them)
        call = stub.ModelInfer.with_call(
            images_request(digits.pngs, outputs=("label",), raw=True, id="digits"), metadata=AUTH, timeout=10
        )
        answer, info = call
        assert answer.id == "digits" and dict(info.trailing_metadata())["x-backend"] == "onnx"
        assert [int(b) for b in outputs_of(answer)["label"]] == list(digits.labels)
        # the same images as an FP32 tensor: the logits the REST endpoint gives
        spec = read_manifest(model_store / "mnist" / "1").preprocessing
        x = ((digits.images.astype(np.float32) / 255.0 - spec.mean[0]) / spec.std[0]).reshape(-1, 1, 28, 28)
        logits = outputs_of(stub.ModelInfer(fp32_request(x.astype(np.float32)), metadata=AUTH))["logits"]
        body, headers = codec.encode_request({"input": x.astype(np.float32)}, outputs=["logits"])
        r = httpx.post(f"{gateway.rest}/v2/models/mnist/infer", content=body,
                       headers={**headers, "Authorization": f"Bearer {KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        rest = codec.decode_response(r.content, int(r.headers[codec.HEADER_LENGTH])).outputs["logits"]
        np.testing.assert_allclose(logits, rest, rtol=1e-5, atol=1e-5)
        assert list(logits.argmax(axis=1)) == list(digits.labels)


def test_client_mistakes_and_missing_key(gateway: Gateway, digits: Digits) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        stub = gateway.stub(channel)
        wrong_shape = fp32_request(np.zeros((1, 27, 28), np.float32))
        oversize = fp32_request(np.zeros((400, 784), np.float32))  # 1.25 MB > MAX_BODY
        cases = [
            (wrong_shape, AUTH, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
            (fp32_request(np.zeros((1, 784)), model="nope"), AUTH, grpc.StatusCode.NOT_FOUND, "nope"),
            (oversize, AUTH, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
            (images_request([digits.pngs[0]]), (), grpc.StatusCode.UNAUTHENTICATED, "Authorization"),
            (images_request([b"not an image"]), AUTH, grpc.StatusCode.INVALID_ARGUMENT, "image"),
        ]
        for request, metadata, code, words in cases:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata, timeout=10)
            error = info.value
            assert (error.code(), words in (error.details() or "")) == (code, True), error  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            # the gateway's own deadline, shorter than any inference
            stub.ModelInfer(images_request(digits.pngs), metadata=(*AUTH, ("x-request-timeout", "0.001")))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        # and it still answers
        answer = stub.ModelInfer(images_request([digits.pngs[9]]), metadata=AUTH, timeout=10)
        assert list(outputs_of(answer)["label"]) == [str(digits.labels[9]).encode()]


def test_tritons_own_grpc_client_is_served(gateway: Gateway, digits: Digits) -> None:
    """NVIDIA's ``tritonclient.grpc`` (what Triton users already run), in its own process: health,
    metadata, PNGs as BYTES, an FP32 tensor, the key as its headers, a client mistake as its error."""
    import base64
    import json
    import subprocess

    spec = digits.spec
    x = ((digits.images.astype(np.float32) / 255.0 - spec.mean[0]) / spec.std[0]).reshape(-1, 1, 28, 28)
    given = {"pngs": [base64.b64encode(p).decode() for p in digits.pngs], "tensor": x.ravel().tolist(),
             "shape": list(x.shape)}
    done = subprocess.run(
        [python_exe(), "-m", "tests.support.triton_client", gateway.grpc_address, KEY],
        input=json.dumps(given), capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert (seen["name"], seen["inputs"]) == ("mnist", ["input"])
    expected = [int(label) for label in digits.labels]
    assert [int(label) for label in seen["labels"]] == expected and seen["argmax"] == expected
    assert seen["error"]["status"] == "StatusCode.INVALID_ARGUMENT" and "shape" in seen["error"]["message"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_grpc_port_another_program_holds_stops_the_start(tmp_path: Path, workers: str) -> None:
    done = start_gateway_on_a_held_port(tmp_path, "grpc_port", workers=int(workers))
    assert done.returncode != 0
    message = b"cannot listen for gRPC" if workers == "1" else b"Address already in use"
    assert message in done.stderr, done.stderr[-2000:]
