"""Unit tests of the OIP v2 tensor codec (pure logic)."""

from __future__ import annotations

import json
import resource
import struct

import numpy as np
import pytest

from triserve_common import codec
from triserve_common.errors import BadRequestError, TriserveError
from triserve_common.manifest import TensorSpec
from triserve_common.tensor_checks import json_limits


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
    with pytest.raises(BadRequestError, match="does not fit INT8"):
        codec.decode_request(over, None)
    head = b'{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":'
    deep = head + b"[" * 100000 + b"]" * 100000 + b"}]}"
    with pytest.raises(BadRequestError, match="nested too deeply"):
        codec.decode_request(deep, None)


# ---------------------------------------------------------------- hostile input (issue 10)


def _json_input(**fields: object) -> bytes:
    inp = {"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0], **fields}
    return json.dumps({"inputs": [inp]}).encode()


def _binary_request(inp: dict[str, object], payload: bytes) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [inp]}).encode()
    return head + payload, len(head)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["1.5"], "element 0 is the string '1.5'"),
        ([True], "element 0 is the boolean true"),
        ([None], "element 0 is null"),
        ([{"x": 1}], "element 0 is a JSON object"),
        ([1e39], "must be finite numbers that fit FP32"),
    ],
)
def test_fp32_json_data_takes_finite_json_numbers_only(data: list[object], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        codec.decode_request(_json_input(data=data), None)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_refused(token: str) -> None:
    body = b'{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[' + token.encode() + b"]}]}"
    with pytest.raises(BadRequestError, match=f"'{token}' is not a JSON value"):
        codec.decode_request(body, None)


def test_json_numbers_that_fit_are_accepted_exactly() -> None:
    body = _json_input(shape=[3], data=[1, 2.5, -0.0])
    np.testing.assert_array_equal(codec.decode_request(body, None).tensors["a"], [1.0, 2.5, 0.0])
    ints = _json_input(shape=[2], datatype="INT64", data=[-(2**63), 2**63 - 1])
    assert codec.decode_request(ints, None).tensors["a"].tolist() == [-(2**63), 2**63 - 1]
    with pytest.raises(BadRequestError, match="INT32 data must be JSON integers; element 0 is float"):
        codec.decode_request(_json_input(datatype="INT32", data=[1.5]), None)
    with pytest.raises(BadRequestError, match="BOOL data must be JSON booleans"):
        codec.decode_request(_json_input(datatype="BOOL", data=[1]), None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shape": "3"}, "inputs.0.shape"),
        ({"shape": [1.0]}, "inputs.0.shape.0"),
        ({"shape": [True]}, "inputs.0.shape.0"),
        ({"name": 3}, "inputs.0.name"),
        ({"datatype": None}, "inputs.0.datatype"),
        ({"parameters": []}, "inputs.0.parameters"),
        ({"shape": [1] * 9, "data": [1.0]}, "9 dimensions, at most 8"),
        ({"shape": [-2], "data": [1.0]}, "negative dimension"),
        ({"shape": [1, -1], "data": [1.0]}, "negative dimension"),
        ({"shape": [2**40, 2**40]}, "over the limit of"),
        ({"parameters": {"binary_data_size": True}}, "binary_data_size must be a non-negative integer"),
    ],
)
def test_wrong_field_types_and_shapes_are_4xx_naming_the_field(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(TriserveError, match=message) as info:
        codec.decode_request(_json_input(**fields), None)
    assert 400 <= info.value.status_code < 500


def test_binary_bytes_shape_is_checked_against_the_body_before_allocating() -> None:
    started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inp = {"name": "img", "shape": [10_000_000], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}
    body, n = _binary_request(inp, b"\x00" * 4)
    with pytest.raises(BadRequestError, match="10000000 BYTES elements, which need at least 40000000"):
        codec.decode_request(body, n)
    inp["shape"] = [100_000_000]
    body, n = _binary_request(inp, b"\x00" * 4)
    with pytest.raises(TriserveError, match="declares 100000000 elements, over the limit") as info:
        codec.decode_request(body, n)
    assert info.value.status_code == 413
    # ru_maxrss is in KiB on Linux: an 800 MB object array would have moved it far beyond this
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - started < 20 * 1024


def test_binary_numeric_shape_must_match_the_bytes() -> None:
    inp = {"name": "a", "shape": [1_000_000_000], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    body, n = _binary_request(inp, b"\x00" * 8)
    with pytest.raises(TriserveError, match=r"over the limit|needs 4000000000 bytes"):
        codec.decode_request(body, n)
    inp = {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 7}}
    body, n = _binary_request(inp, b"\x00" * 7)
    with pytest.raises(BadRequestError, match="not a whole number of FP32 elements"):
        codec.decode_request(body, n)


def test_binary_nan_is_refused_in_requests_but_decoded_in_responses() -> None:
    x = np.array([[np.nan, 1.0]], dtype=np.float32)
    body, headers = codec.encode_request({"a": x})
    with pytest.raises(BadRequestError, match="must be finite"):
        codec.decode_request(body, int(headers[codec.HEADER_LENGTH]))
    out, out_headers = codec.encode_response("m", "1", None, {"logits": x}, binary=True)
    decoded = codec.decode_response(out, int(out_headers[codec.HEADER_LENGTH]))
    assert np.isnan(decoded.outputs["logits"][0, 0])


def test_json_response_with_nan_is_a_422_never_invalid_json() -> None:
    x = np.array([[np.nan, 1.0]], dtype=np.float32)
    with pytest.raises(TriserveError, match="NaN/Inf, which JSON cannot carry") as info:
        codec.encode_response("m", "1", None, {"logits": x}, binary=False)
    assert info.value.status_code == 422


def test_leading_wildcard_takes_the_data_length() -> None:
    body = json.dumps(
        {"inputs": [{"name": "img", "shape": [-1], "datatype": "BYTES", "data": ["a", "bb", "c"]}]}
    ).encode()
    assert codec.decode_request(body, None).tensors["img"].shape == (3,)
    items = codec.pack_bytes([b"x", b"yy"])
    inp = {"name": "img", "shape": [-1], "datatype": "BYTES", "parameters": {"binary_data_size": len(items)}}
    bin_body, n = _binary_request(inp, items)
    assert list(codec.decode_request(bin_body, n).tensors["img"]) == [b"x", b"yy"]
    fp = {"name": "a", "shape": [-1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
    fp_body, n = _binary_request(fp, np.arange(4, dtype="<f4").tobytes())
    assert codec.decode_request(fp_body, n).tensors["a"].shape == (2, 2)
    with pytest.raises(BadRequestError, match="cannot hold the 3 elements"):
        codec.decode_request(_json_input(shape=[-1, 2], data=[1.0, 2.0, 3.0]), None)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (struct.pack("<I", 1000) + b"abc", "declares 1000 bytes, only 3 left"),
        (struct.pack("<I", 1) + b"a" + b"zz", "2 trailing bytes"),
        (b"\x01\x00", "need at least 4 bytes"),
        (struct.pack("<I", 0) + b"\x01\x00", "2 trailing bytes"),
    ],
)
def test_lying_bytes_lengths_are_400(payload: bytes, message: str) -> None:
    inp = {"name": "img", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(payload)}}
    body, n = _binary_request(inp, payload)
    with pytest.raises(BadRequestError, match=message):
        codec.decode_request(body, n)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or false"),
        ({"outputs": [{"name": "o", "parameters": {"binary_data": 1}}]}, "binary_data must be true or false"),
        ({"outputs": [{"parameters": {}}]}, "outputs.0.name"),
    ],
)
def test_output_flags_are_strict(params: dict[str, object], message: str) -> None:
    body = json.dumps({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}], **params})
    with pytest.raises(BadRequestError, match=message):
        codec.decode_request(body.encode(), None)


def test_json_values_are_bounded_before_parsing() -> None:
    limits = json_limits([TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 28, 28])], 2, "MAX_ROWS")
    assert limits.max_json_values == 2 * 784 + 64
    fits = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 784], "data": [0.5] * 1568}]}
    assert codec.decode_request(json.dumps(fits).encode(), None, limits).tensors["input"].shape == (2, 784)
    body = (
        '{"inputs":[{"name":"input","datatype":"BYTES","shape":[100000],"data":['
        + ",".join(['"ab"'] * 100_000)
        + "]}]}"
    ).encode()
    started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        TriserveError, match=r"up to 100003 values, over the limit of 1632 \(raised by MAX_ROWS"
    ):
        codec.decode_request(body, None, limits)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - started < 5 * 1024  # KiB: nothing parsed
    dynamic = json_limits([TensorSpec(name="x", datatype="FP32", shape=[-1, -1])], 2, "MAX_ROWS")
    assert dynamic.max_json_values is None
