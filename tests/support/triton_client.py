"""NVIDIA's ``tritonclient.grpc`` against a KServe v2 gRPC endpoint, run as its own process
(``python -m tests.support.triton_client ADDRESS KEY``): its generated ``inference.*`` protos and the
gateway's (``triserve_gateway.proto``) cannot share one process's descriptor pool. Reads
``{"pngs": [base64...], "tensor": [[...]], "shape": [...]}`` on stdin, prints what the server
answered as JSON."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def check(address: str, key: str, pngs: list[bytes], tensor: np.ndarray) -> dict[str, Any]:
    """Health, metadata, PNGs as BYTES, an FP32 tensor and a wrong shape, as a Triton user sends them."""
    client = triton.InferenceServerClient(address)
    headers = {"authorization": f"Bearer {key}"}
    meta = client.get_model_metadata("mnist", headers=headers)
    images = triton.InferInput("input", [len(pngs)], "BYTES")
    images.set_data_from_numpy(np.array(pngs, dtype=object))
    labels = client.infer("mnist", [images], outputs=[triton.InferRequestedOutput("label")], headers=headers)
    fp32 = triton.InferInput("input", list(tensor.shape), "FP32")
    fp32.set_data_from_numpy(tensor)
    logits = client.infer("mnist", [fp32], headers=headers).as_numpy("logits")
    wrong = triton.InferInput("input", [1, 27, 28], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 27, 28), np.float32))
    try:
        client.infer("mnist", [wrong], headers=headers)
        error: dict[str, Any] = {}
    except InferenceServerException as exc:
        error = {"status": exc.status(), "message": exc.message()}
    result = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mnist", headers=headers),
        "name": meta.name,
        "inputs": [t.name for t in meta.inputs],
        "labels": [b.decode() for b in labels.as_numpy("label")],
        "argmax": [] if logits is None else logits.argmax(axis=1).tolist(),
        "error": error,
    }
    client.close()
    return result


def main() -> None:
    address, key = sys.argv[1], sys.argv[2]
    given = json.load(sys.stdin)
    pngs = [base64.b64decode(p) for p in given["pngs"]]
    tensor = np.asarray(given["tensor"], dtype=np.float32).reshape(given["shape"])
    print(json.dumps(check(address, key, pngs, tensor)))


if __name__ == "__main__":
    main()
