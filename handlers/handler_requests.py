"""One request of a TorchServe batch: its body parsed into model input, its 4xx answer.

Part of triserve's TorchServe handler (``mnist_handler.py`` and the modules beside it, packed side by
side into every ``.mar``; TorchServe puts the archive's folder on the worker's ``sys.path``). Imports
only what a TorchServe worker has: stdlib, numpy and Pillow.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

NPY_MAGIC = b"\x93NUMPY"
MAX_IMAGES_PER_REQUEST = 4096
MAX_IMAGE_PIXELS = 40_000_000

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
_PHRASES = {
    400: "Bad Request",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
}
_TYPES = {
    400: "BadRequest",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableEntity",
    500: "InternalServerError",
}


def request_error(code: int, message: str) -> ValueError:
    """A per-request client error: ``ValueError(code, message)``."""
    return ValueError(code, message)


def error_of(exc: Exception) -> tuple[int, str]:
    """(status, message) of a request's failure: our 4xx ValueError(code, message), else 422."""
    if isinstance(exc, ValueError) and len(exc.args) == 2 and isinstance(exc.args[0], int):
        return exc.args[0], str(exc.args[1])
    return 422, f"cannot process request body: {exc}"


def input_shape(spec: dict[str, Any]) -> tuple[int, int, int]:
    """Per-image input shape ``(C, H, W)`` of a preprocessing spec."""
    channels = 1 if spec.get("color_mode", "L") == "L" else 3
    return channels, int(spec["height"]), int(spec["width"])


def request_body(request: Any) -> bytes:
    """The raw body of one request (TorchServe puts it under "data" or "body")."""
    if isinstance(request, dict):
        payload = request.get("data")
        if payload is None:
            payload = request.get("body")
    else:
        payload = request
    if payload is None:
        raise request_error(400, "empty request body: send an image or a .npy float32 [N,C,H,W]")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode("utf-8", errors="surrogateescape")
    else:
        raise request_error(
            415, "body is not an image or a .npy array (got a decoded JSON value; send raw bytes)"
        )
    if not data:
        raise request_error(400, "empty request body: send an image or a .npy float32 [N,C,H,W]")
    return data


def parse_npy(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """``.npy`` bytes → float32 ``[N, *shape]``; 4xx ValueError on anything else."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for bad files
        raise request_error(400, f"invalid .npy body: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise request_error(400, "invalid .npy body: not a single array")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise request_error(400, f".npy dtype must be float32, got {arr.dtype}")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or arr.shape[0] < 1:
        want = ",".join(map(str, shape))
        raise request_error(400, f".npy shape must be [N,{want}] with N >= 1, got {list(arr.shape)}")
    if arr.shape[0] > MAX_IMAGES_PER_REQUEST:
        raise request_error(413, f".npy holds {arr.shape[0]} images, at most {MAX_IMAGES_PER_REQUEST}")
    if not np.isfinite(arr).all():
        raise request_error(400, ".npy values must be finite (no NaN/inf)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def preprocess_image(data: bytes, spec: dict[str, Any]) -> np.ndarray:
    """Encoded image → float32 [1,1,H,W] per the preprocessing spec (Pillow only, no torchvision)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise request_error(
                    413, f"image is {img.width}x{img.height}, over {MAX_IMAGE_PIXELS} pixels"
                )
            try:
                img.load()
            except Exception as exc:  # truncated / corrupt image data
                raise request_error(422, f"cannot decode image: {exc}") from exc
            gray = img.convert(spec["color_mode"])
    except UnidentifiedImageError as exc:
        raise request_error(
            415, "body is neither an image Pillow can read nor a .npy float32 [N,C,H,W] array"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise request_error(413, f"image too large: {exc}") from exc
    size = (int(spec["width"]), int(spec["height"]))
    if gray.size != size:
        gray = gray.resize(size, _RESAMPLE[spec.get("resample", "bilinear")])
    x = np.asarray(gray, dtype=np.float32)
    if spec.get("invert"):
        x = 255.0 - x
    x = x * np.float32(spec["scale"])
    x = (x - np.float32(spec["mean"][0])) / np.float32(spec["std"][0])
    return x.reshape(1, 1, size[1], size[0]).astype(np.float32)


def parse_request(request: Any, spec: dict[str, Any], shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """(inputs [n,C,H,W], is_npy) of one request: a ``.npy`` batch or one encoded image."""
    data = request_body(request)
    if data.startswith(NPY_MAGIC):
        return parse_npy(data, shape), True
    return preprocess_image(data, spec), False


def set_content_type(context: Any, idx: int, value: str) -> None:
    """The Content-Type of request ``idx``'s answer, where TorchServe's context can set it."""
    if context is not None and hasattr(context, "set_response_content_type"):
        with contextlib.suppress(AttributeError, IndexError, TypeError):
            context.set_response_content_type(idx, value)


def error_answer(context: Any, idx: int, code: int, message: str) -> dict[str, Any]:
    """Request ``idx``'s error answer ``{"code", "type", "message"}``, its status set on the context."""
    if context is not None and hasattr(context, "set_response_status"):
        context.set_response_status(code, _PHRASES.get(code, "Error"), idx)
    set_content_type(context, idx, "application/json")
    return {"code": code, "type": _TYPES.get(code, "Error"), "message": message}
