"""The one place tests encode what they send: images (PNG or any Pillow format), ``.npy`` arrays
and OIP v2 JSON inference requests (binary ones: :func:`triserve_common.codec.encode_request`)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


def image_bytes(image: np.ndarray | Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """An image (a uint8 ``[H, W]`` / ``[H, W, C]`` array or a Pillow image) encoded as ``fmt``, with
    Pillow's save ``options`` for that format (``lossless=True``, ``save_all=True``, ...)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png(image: np.ndarray | Image.Image) -> bytes:
    """PNG bytes (what ``curl -T digit.png`` uploads)."""
    return image_bytes(image, "PNG")


def npy(array: np.ndarray) -> bytes:
    """An array in numpy's ``.npy`` format (the gateway ↔ TorchServe body)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def bytes_items(items: Sequence[bytes]) -> np.ndarray:
    """A BYTES tensor (object array of ``bytes``) for :func:`triserve_common.codec.encode_request`."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return arr


def v2_input(
    name: str, shape: list[int], datatype: str = "FP32", data: list[Any] | None = None, fill: Any = 0
) -> dict[str, Any]:
    """One OIP v2 JSON input; ``data`` defaults to ``fill`` repeated to the size of ``shape``."""
    if data is None:
        data = [fill] * int(np.prod(shape))
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def v2_tensor(name: str, x: np.ndarray) -> dict[str, Any]:
    """An FP32 array as a JSON input (flat data, the array's shape)."""
    return v2_input(name, list(x.shape), "FP32", x.ravel().tolist())


def v2_images(name: str, images: Sequence[bytes]) -> dict[str, Any]:
    """Encoded images as a JSON BYTES input (base64, as the gateway expects in JSON)."""
    return v2_input(name, [len(images)], "BYTES", [base64.b64encode(i).decode() for i in images])


def v2_request(*inputs: dict[str, Any], outputs: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    """An OIP v2 JSON inference request of ``inputs`` asking for ``outputs`` (default: the model's)."""
    request: dict[str, Any] = {**fields, "inputs": list(inputs)}
    if outputs:
        request["outputs"] = [{"name": o} for o in outputs]
    return request
