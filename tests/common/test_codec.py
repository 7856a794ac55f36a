"""Unit tests of the OIP v2 tensor codec (pure logic)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triserve_common import codec
from triserve_common.errors import BadRequestError


def test_binary_request_round_trip_is_exact() -> None:
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    body, headers = codec.encode_request({"input": x}, outputs=["logits"], request_id="r1")
    n = int(headers[codec.HEADER_LENGTH])
    assert json.loads(body[:n])["inputs"][0]["parameters"]["binary_data_size"] == x.nbytes
    assert len(body) == n + x.nbytes
    decoded = codec.decode_request(body, codec.parse_header_length(headers[codec.HEADER_LENGTH]))
    assert decoded.request.id == "r1"
    np.testing.assert_array_equal(decoded.tensors["input"], x)
    assert decoded.wants_binary("logits")


def test_json_request_nested_and_flat_agree() -> None:
    flat = {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}]}
    nested = {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]}
    a = codec.decode_request(json.dumps(flat).encode(), None).tensors["a"]
    b = codec.decode_request(json.dumps(nested).encode(), None).tensors["a"]
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int32 and a.shape == (2, 2)


def test_response_binary_and_json_decode_to_same_values() -> None:
    y = np.arange(20, dtype=np.float32).reshape(2, 10) / 7
    for binary in (True, False):
        body, headers = codec.encode_response("m", "1", "id", {"logits": y}, binary=binary)
        resp = codec.decode_response(body, codec.parse_header_length(headers.get(codec.HEADER_LENGTH)))
        np.testing.assert_array_equal(resp.outputs["logits"], y)
        assert resp.model_version == "1"


def test_bytes_tensors_round_trip_binary() -> None:
    items = np.empty(2, dtype=object)
    items[:] = [b"\x89PNG...", b""]
    body, headers = codec.encode_request({"img": items})
    decoded = codec.decode_request(body, int(headers[codec.HEADER_LENGTH]))
    assert list(decoded.tensors["img"]) == [b"\x89PNG...", b""]


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b'{"inputs": 3}', None, "invalid inference request"),
        (b'{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","data":[1,2]}]}', None, "needs 3 elements"),
        (b'{"inputs":[{"name":"a","shape":[1],"datatype":"FP99","data":[1]}]}', None, "unsupported datatype"),
        (
            b'{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}',
            None,
            "no Inference-Header-Content-Length",
        ),
        (b'{"inputs":[]}', 999, "larger than the body"),
    ],
)
def test_malformed_requests_are_400(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as info:
        codec.decode_request(body, header_length)
    assert info.value.status_code == 400


def test_binary_size_mismatch_names_expected_and_received() -> None:
    head = b'{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":4}}]}'
    with pytest.raises(BadRequestError, match="needs 8 bytes, binary data has 4"):
        codec.decode_request(head + b"\x00" * 4, len(head))


def test_header_length_must_be_integer() -> None:
    with pytest.raises(BadRequestError, match="must be an integer"):
        codec.parse_header_length("abc")


def test_out_of_range_and_too_deep_data_are_400() -> None:
    over = b'{"inputs":[{"name":"a","shape":[1],"datatype":"INT8","data":[1000]}]}'
    with pytest.raises(BadRequestError, match="not INT8"):
        codec.decode_request(over, None)
    head = b'{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":'
    deep = head + b"[" * 100000 + b"]" * 100000 + b"}]}"
    with pytest.raises(BadRequestError, match="nested too deeply"):
        codec.decode_request(deep, None)
