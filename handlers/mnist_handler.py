"""TorchServe handler for the triserve MNIST classifier (packaged into ``mnist.mar``).

Imports only what a TorchServe worker has: stdlib, numpy, Pillow and torch.

Two request formats, told apart by the body's first bytes (any mix within one batch):

* **Raw image** (PNG, JPEG, ... — like TorchServe's stock MNIST example)::

      curl http://127.0.0.1:8080/predictions/mnist -T 0.png     →  0

  Decoded with Pillow and preprocessed with the spec shipped in the archive (``preprocess.json``:
  grayscale, resize to 28x28, scale 1/255, normalise mean 0.1307 / std 0.3081). The answer is the
  predicted class as an int, which TorchServe renders as ``0``.

* **Preprocessed batch** (what the gateway sends): a ``.npy`` body (numpy's format, detected by its
  magic ``\\x93NUMPY``; loaded with ``allow_pickle=False``) holding float32 ``[N,1,28,28]`` already
  normalised. The answer is a ``.npy`` (``application/octet-stream``) of float32 logits ``[N,10]``.

TorchServe batching (``batchSize``/``maxBatchDelay`` in the archive's ``model-config.yaml``): ``handle``
receives up to ``batchSize`` requests, runs all their images in one forward pass and answers once per
request, in order. A bad request (empty body, not an image, truncated image, npy of the wrong
shape/dtype) gets its own 4xx answer ``{"code": ..., "type": ..., "message": ...}`` through
``context.set_response_status(code, phrase, idx)``; the other requests of the batch are served and the
worker keeps running.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
PREPROCESS_FILE = "preprocess.json"
NUM_CLASSES = 10
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
DEFAULT_SPEC: dict[str, Any] = {
    "color_mode": "L",
    "width": 28,
    "height": 28,
    "resample": "bilinear",
    "invert": False,
    "scale": 1.0 / 255.0,
    "mean": [0.1307],
    "std": [0.3081],
}


def select_device(gpu_id: Any, cuda_available: bool) -> str:
    """``cuda:<gpu_id>`` when TorchServe gave this worker a GPU and torch sees CUDA, else ``cpu``.

    TorchServe sets ``context.system_properties["gpu_id"]`` when it has GPUs to hand out (None or
    absent on CPU-only hosts), like its own BaseHandler reads it.
    """
    if not cuda_available or gpu_id is None or int(gpu_id) < 0:
        return "cpu"
    return f"cuda:{int(gpu_id)}"


def _request_error(code: int, message: str) -> ValueError:
    """A per-request client error: ``ValueError(code, message)``."""
    return ValueError(code, message)


def _body(request: Any) -> bytes:
    """The raw body of one request (TorchServe puts it under "data" or "body")."""
    if isinstance(request, dict):
        payload = request.get("data")
        if payload is None:
            payload = request.get("body")
    else:
        payload = request
    if payload is None:
        raise _request_error(400, "empty request body: send an image or a .npy float32 [N,1,28,28]")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode("utf-8", errors="surrogateescape")
    else:
        raise _request_error(
            415, "body is not an image or a .npy array (got a decoded JSON value; send raw bytes)"
        )
    if not data:
        raise _request_error(400, "empty request body: send an image or a .npy float32 [N,1,28,28]")
    return data


def parse_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes → float32 [N,1,28,28]; 4xx ValueError on anything else."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for bad files
        raise _request_error(400, f"invalid .npy body: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise _request_error(400, "invalid .npy body: not a single array")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise _request_error(400, f".npy dtype must be float32, got {arr.dtype}")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != (1, 28, 28) or arr.shape[0] < 1:
        raise _request_error(400, f".npy shape must be [N,1,28,28] with N >= 1, got {list(arr.shape)}")
    if arr.shape[0] > MAX_IMAGES_PER_REQUEST:
        raise _request_error(413, f".npy holds {arr.shape[0]} images, at most {MAX_IMAGES_PER_REQUEST}")
    if not np.isfinite(arr).all():
        raise _request_error(400, ".npy values must be finite (no NaN/inf)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def preprocess_image(data: bytes, spec: dict[str, Any]) -> np.ndarray:
    """Encoded image → float32 [1,1,H,W] per the preprocessing spec (Pillow only, no torchvision)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise _request_error(
                    413, f"image is {img.width}x{img.height}, over {MAX_IMAGE_PIXELS} pixels"
                )
            try:
                img.load()
            except Exception as exc:  # truncated / corrupt image data
                raise _request_error(422, f"cannot decode image: {exc}") from exc
            gray = img.convert(spec["color_mode"])
    except UnidentifiedImageError as exc:
        raise _request_error(
            415, "body is neither an image Pillow can read nor a .npy float32 [N,1,28,28] array"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise _request_error(413, f"image too large: {exc}") from exc
    size = (int(spec["width"]), int(spec["height"]))
    if gray.size != size:
        gray = gray.resize(size, _RESAMPLE[spec.get("resample", "bilinear")])
    x = np.asarray(gray, dtype=np.float32)
    if spec.get("invert"):
        x = 255.0 - x
    x = x * np.float32(spec["scale"])
    x = (x - np.float32(spec["mean"][0])) / np.float32(spec["std"][0])
    return x.reshape(1, 1, size[1], size[0]).astype(np.float32)


class MnistHandler:
    """TorchServe entry point: ``initialize(context)`` once, then ``handle(data, context)`` per batch."""

    def __init__(self) -> None:
        self.model: torch.jit.ScriptModule | None = None
        self.device = torch.device("cpu")
        self.spec: dict[str, Any] = dict(DEFAULT_SPEC)
        self.initialized = False

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir") or "."
        serialized = "model.pt"
        manifest = getattr(context, "manifest", None) or {}
        serialized = manifest.get("model", {}).get("serializedFile", serialized)
        model_path = os.path.join(model_dir, serialized)
        if not os.path.isfile(model_path):
            raise RuntimeError(f"TorchScript model {model_path} not found in the archive")
        self.device = torch.device(select_device(props.get("gpu_id"), torch.cuda.is_available()))
        self.model = torch.jit.load(model_path, map_location=self.device).eval()  # type: ignore[no-untyped-call]
        spec_path = os.path.join(model_dir, PREPROCESS_FILE)
        if os.path.isfile(spec_path):
            with open(spec_path) as fh:
                self.spec = {**DEFAULT_SPEC, **json.load(fh)}
        else:
            logger.warning("%s not in the archive; using the default MNIST spec", PREPROCESS_FILE)
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        self.initialized = True
        logger.info("loaded %s on %s; preprocessing %s", model_path, self.device, self.spec)

    def _parse(self, request: Any) -> tuple[np.ndarray, bool]:
        """(inputs [n,1,28,28], is_npy) of one request."""
        data = _body(request)
        if data.startswith(NPY_MAGIC):
            return parse_npy(data), True
        return preprocess_image(data, self.spec), False

    def _forward(self, x: np.ndarray) -> np.ndarray:
        assert self.model is not None
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(x).to(self.device))
        return np.asarray(logits.cpu().numpy(), dtype=np.float32)

    def handle(self, data: list[Any] | None, context: Any) -> list[Any] | None:
        if data is None:  # TorchServe's warm-up call with no data
            return None
        if not self.initialized:
            self.initialize(context)
        results: list[Any] = [None] * len(data)
        parsed: list[tuple[int, np.ndarray, bool]] = []
        for idx, request in enumerate(data):
            try:
                x, is_npy = self._parse(request)
                parsed.append((idx, x, is_npy))
            except Exception as exc:  # one bad request must not fail the batch
                if isinstance(exc, ValueError) and len(exc.args) == 2 and isinstance(exc.args[0], int):
                    code, message = exc.args[0], str(exc.args[1])
                else:
                    code, message = 422, f"cannot process request body: {exc}"
                results[idx] = self._error(context, idx, code, message)
        if parsed:
            batch = np.concatenate([x for _, x, _ in parsed])
            try:
                logits = self._forward(batch)
            except Exception as exc:  # pragma: no cover - model failure, not a client error
                logger.exception("forward pass failed")
                for idx, _, _ in parsed:
                    results[idx] = self._error(context, idx, 500, f"inference failed: {exc}")
                return results
            start = 0
            for idx, x, is_npy in parsed:
                part = logits[start : start + x.shape[0]]
                start += x.shape[0]
                if is_npy:
                    buf = io.BytesIO()
                    np.save(buf, part.astype(np.float32), allow_pickle=False)
                    results[idx] = buf.getvalue()
                    _set_content_type(context, idx, "application/octet-stream")
                else:
                    results[idx] = int(part[0].argmax())
        return results

    @staticmethod
    def _error(context: Any, idx: int, code: int, message: str) -> dict[str, Any]:
        logger.info("request %d rejected (%d): %s", idx, code, message)
        if context is not None and hasattr(context, "set_response_status"):
            context.set_response_status(code, _PHRASES.get(code, "Error"), idx)
        _set_content_type(context, idx, "application/json")
        return {"code": code, "type": _TYPES.get(code, "Error"), "message": message}


def _set_content_type(context: Any, idx: int, value: str) -> None:
    if context is not None and hasattr(context, "set_response_content_type"):
        with contextlib.suppress(AttributeError, IndexError, TypeError):
            context.set_response_content_type(idx, value)
