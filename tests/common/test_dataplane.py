"""Unit tests of the shared OIP v2 data plane (validation, routing, outputs, metrics)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tests.common.runtime_fakes import FakeRuntime, expected_logits
from triserve_common import codec
from triserve_common.dataplane import UNKNOWN_MODEL_LABEL, DataPlane
from triserve_common.errors import BadRequestError, ModelNotFoundError, PayloadTooLargeError, TriserveError
from triserve_common.repository import ModelRepository


@pytest.fixture
async def plane() -> AsyncIterator[DataPlane]:
    runtime = FakeRuntime(max_batch_size=8)
    runtime.load()
    dp = DataPlane(ModelRepository.of([runtime]), CollectorRegistry(), "test-server", "0.0.1")
    dp.start()
    yield dp


def body_of(*inputs: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def tensor(name: str = "input", shape: list[int] | None = None, datatype: str = "FP32") -> dict[str, object]:
    shape = shape if shape is not None else [2, 1, 28, 28]
    return {"name": name, "shape": shape, "datatype": datatype, "data": [0] * int(np.prod(shape))}


async def run(
    dp: DataPlane,
    body: bytes,
    name: str = "mnist",
    version: str | None = None,
    header_length: str | None = None,
) -> codec.DecodedResponse:
    async def read() -> bytes:
        return body

    result = await dp.infer(name, version, read, header_length)
    length = result.headers.get(codec.HEADER_LENGTH)
    return codec.decode_response(result.body, int(length) if length else None)


def samples(dp: DataPlane, model: str, status: str) -> float:
    """Requests of ``model`` answered ``status``, over every version label."""
    (family,) = dp.metrics.requests.collect()
    return sum(
        s.value for s in family.samples
        if s.name.endswith("_total") and s.labels["model"] == model and s.labels["status"] == status
    )


async def test_binary_request_runs_the_runtime(plane: DataPlane) -> None:
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    body, headers = codec.encode_request({"input": x}, outputs=["logits"], request_id="req-7")
    resp = await run(plane, body, header_length=headers[codec.HEADER_LENGTH])
    np.testing.assert_array_equal(resp.outputs["logits"], expected_logits(x))
    assert resp.model_name == "mnist" and resp.model_version == "1" and resp.request_id == "req-7"


async def test_json_request_gets_json_outputs(plane: DataPlane) -> None:
    async def read() -> bytes:
        return body_of(tensor(shape=[1, 1, 28, 28]))

    result = await plane.infer("mnist", "1", read, None)
    assert result.headers["content-type"] == codec.JSON_CONTENT_TYPE
    out = json.loads(result.body)["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [1, 10] and out["datatype"] == "FP32"


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        (
            [tensor(name="pixels")],
            "unexpected input 'pixels': model 'mnist' expects inputs ['input'], received ['pixels']",
        ),
        ([tensor(), tensor(name="extra")], "unexpected input 'extra'"),
        ([tensor(datatype="FP64")], "input 'input': datatype FP64 does not match the model's FP32"),
        ([tensor(datatype="INT32")], "datatype INT32 does not match the model's FP32"),
        ([tensor(shape=[2, 28, 28])], "shape [2, 28, 28] does not match the model's [-1, 1, 28, 28]"),
        ([tensor(shape=[2, 3, 28, 28])], "shape [2, 3, 28, 28] does not match"),
        ([tensor(shape=[0, 1, 28, 28])], "empty batch"),
    ],
)
async def test_inputs_are_validated_against_the_spec(
    plane: DataPlane, inputs: list[dict[str, object]], fragment: str
) -> None:
    with pytest.raises(BadRequestError) as err:
        await run(plane, body_of(*inputs))
    assert fragment in err.value.message
    assert err.value.status_code == 400


async def test_batches_over_max_batch_size_are_refused_json_before_parsing(plane: DataPlane) -> None:
    x = np.zeros((9, 1, 28, 28), np.float32)
    body, headers = codec.encode_request({"input": x})
    with pytest.raises(BadRequestError, match="batch size 9 exceeds this model's max_batch_size 8"):
        await run(plane, body, header_length=headers[codec.HEADER_LENGTH])
    with pytest.raises(
        PayloadTooLargeError, match=r"over the limit of 6336 \(raised by the model's max_batch_size\)"
    ):
        await run(plane, body_of(tensor(shape=[9, 1, 28, 28])))


async def test_missing_input_is_named(plane: DataPlane) -> None:
    with pytest.raises(BadRequestError, match="missing input 'input'"):
        await run(plane, json.dumps({"inputs": []}).encode())


async def test_unknown_output_requested(plane: DataPlane) -> None:
    with pytest.raises(BadRequestError, match="unknown output 'probs'"):
        await run(plane, body_of(tensor(), outputs=[{"name": "probs"}]))


@pytest.mark.parametrize(("name", "version"), [("resnet", None), ("mnist", "2"), ("resnet", "1")])
async def test_unknown_model_or_version_is_404(plane: DataPlane, name: str, version: str | None) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        await run(plane, body_of(tensor()), name=name, version=version)
    assert err.value.status_code == 404
    with pytest.raises(ModelNotFoundError):
        plane.model_metadata(name, version)


async def test_engine_failure_is_500_not_a_client_error() -> None:
    runtime = FakeRuntime(fail=True)
    runtime.load()
    dp = DataPlane(ModelRepository.of([runtime]), CollectorRegistry(), "s", "0")
    dp.start()
    try:
        with pytest.raises(TriserveError) as err:
            await run(dp, body_of(tensor()))
        assert err.value.status_code == 500 and "engine exploded" in err.value.message
    finally:
        await dp.stop()


async def test_metrics_count_requests_by_model_and_status(plane: DataPlane) -> None:
    await run(plane, body_of(tensor()))
    await run(plane, body_of(tensor(shape=[3, 1, 28, 28])))
    with pytest.raises(BadRequestError):
        await run(plane, b"{not json")
    with pytest.raises(ModelNotFoundError):
        await run(plane, body_of(tensor()), name="other")
    assert samples(plane, "mnist", "200") == 2
    assert samples(plane, "mnist", "400") == 1
    assert samples(plane, UNKNOWN_MODEL_LABEL, "404") == 1
    assert plane.metrics.requests.labels(UNKNOWN_MODEL_LABEL, UNKNOWN_MODEL_LABEL, "404")._value.get() == 1
    batch = plane.metrics.batch_size.labels("mnist", "1")
    assert batch._sum.get() == 5  # 2 + 3 items


def test_metadata_names_engine_and_io(plane: DataPlane) -> None:
    meta = plane.model_metadata("mnist", None)
    assert meta["name"] == "mnist" and meta["versions"] == ["1"] and meta["platform"] == "fake"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["engine"] == "fake-engine"
    assert plane.model_ready("mnist", "1") is True
    assert plane.server_metadata()["extensions"] == ["binary_tensor_data", "model_repository"]


async def test_stop_makes_the_plane_unready_and_unloads(plane: DataPlane) -> None:
    runtime = plane.repository.get("mnist").runtime
    assert plane.ready()
    await plane.stop()
    assert not runtime.ready and plane.repository.loaded() == []
    with pytest.raises(ModelNotFoundError):
        plane.model_ready("mnist", None)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(
            {"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1000]}]}
        ).encode(),
        b"[" * 100_000,
        json.dumps(
            {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [{"a": 1}]}]}
        ).encode(),
        json.dumps(
            {"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]}
        ).encode(),
        json.dumps({"inputs": [{"name": "input", "shape": [-1], "datatype": "FP32", "data": [1]}]}).encode(),
        json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [1]}]}).encode(),
        json.dumps({"inputs": "input"}).encode(),
    ],
)
async def test_odd_bodies_are_400_never_500(plane: DataPlane, body: bytes) -> None:
    with pytest.raises(BadRequestError):
        await run(plane, body)
