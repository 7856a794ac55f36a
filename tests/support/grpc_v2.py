"""What tests send to the gateway's KServe v2 gRPC endpoint and read back (the generated client)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from triserve_common.codec import pack_bytes, unpack_bytes
from triserve_common.tensor_checks import numpy_dtype
from triserve_gateway.proto import grpc_predict_v2_pb2 as pb
from triserve_gateway.proto import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = ["fp32_request", "images_request", "outputs_of", "pb", "pb_grpc", "stub"]


def stub(channel: grpc.aio.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def _request(model: str, outputs: Sequence[str], **fields: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)  # type: ignore[arg-type]
    for name in outputs:
        request.outputs.add(name=name)
    return request


def fp32_request(
    x: np.ndarray, model: str = "mnist", outputs: Sequence[str] = (), name: str = "input", **fields: object
) -> pb.ModelInferRequest:
    """One FP32 input in ``raw_input_contents`` (little-endian)."""
    request = _request(model, outputs, **fields)
    request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return request


def images_request(
    images: Sequence[bytes], model: str = "mnist", outputs: Sequence[str] = ("label",), raw: bool = False,
    **fields: object,
) -> pb.ModelInferRequest:
    """Encoded images as one BYTES ``[N]`` input: typed ``bytes_contents``, or ``raw_input_contents``
    (4-byte length prefixed, as Triton's client sends them)."""
    request = _request(model, outputs, **fields)
    tensor = request.inputs.add(name="images", datatype="BYTES", shape=[len(images)])
    if raw:
        request.raw_input_contents.append(pack_bytes(list(images)))
    else:
        tensor.contents.bytes_contents.extend(images)
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The answer's outputs as numpy arrays (raw or typed contents; BYTES as ``bytes`` objects)."""
    out: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if response.raw_output_contents:
            raw = response.raw_output_contents[index]
            if tensor.datatype == "BYTES":
                items = unpack_bytes(raw, None, tensor.name)
                arr = np.empty(len(items), dtype=object)
                arr[:] = items
                out[tensor.name] = arr.reshape(shape)
            else:
                out[tensor.name] = np.frombuffer(raw, dtype=numpy_dtype(tensor.datatype)).reshape(shape)
        elif tensor.datatype == "BYTES":
            arr = np.empty(len(tensor.contents.bytes_contents), dtype=object)
            arr[:] = list(tensor.contents.bytes_contents)
            out[tensor.name] = arr.reshape(shape)
        else:
            out[tensor.name] = np.array(tensor.contents.fp32_contents, dtype=np.float32).reshape(shape)
    return out
