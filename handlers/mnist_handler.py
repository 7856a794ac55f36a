"""TorchServe handler for triserve's image classifiers (packaged into every ``<model>.mar``).

Model-generic: everything model-specific comes from files packed in the archive by the trainer —
``preprocess.json`` (colour mode, size, scale, mean/std: the manifest's preprocessing) and
``index_to_name.json`` (TorchServe's convention for class names, ``{"0": "T-shirt/top", ...}``).
Imports only what a TorchServe worker has: stdlib, numpy, Pillow and torch.

Two request formats, told apart by the body's first bytes (any mix within one batch):

* **Raw image** (PNG, JPEG, ... — like TorchServe's stock image classifiers)::

      curl http://127.0.0.1:8080/predictions/mnist -T 0.png       →  0
      curl http://127.0.0.1:8080/predictions/fashion -T boot.png  →  "Ankle boot"

  Decoded with Pillow and preprocessed with the archive's ``preprocess.json``. The answer is the
  predicted label as JSON: numeric labels as numbers (``0``, like TorchServe's MNIST example), names
  as strings.

* **Preprocessed batch** (what the gateway sends): a ``.npy`` body (numpy's format, detected by its
  magic ``\\x93NUMPY``; loaded with ``allow_pickle=False``) holding float32 ``[N,C,H,W]`` already
  normalised (the shape of ``preprocess.json``). The answer is a ``.npy`` (``application/octet-stream``)
  of float32 logits ``[N,classes]``.

TorchServe batching (``batchSize``/``maxBatchDelay`` in the archive's ``model-config.yaml``): ``handle``
receives up to ``batchSize`` requests, runs all their images in one forward pass and answers once per
request, in order. A bad request (empty body, not an image, truncated image, npy of the wrong
shape/dtype) gets its own 4xx answer ``{"code": ..., "type": ..., "message": ...}`` through
``context.set_response_status(code, phrase, idx)``; the other requests of the batch are served and the
worker keeps running.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
PREPROCESS_FILE = "preprocess.json"
LABELS_FILE = "index_to_name.json"
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
#: Defaults for keys an older ``preprocess.json`` may lack (no model-specific values here).
SPEC_DEFAULTS: dict[str, Any] = {"color_mode": "L", "resample": "bilinear", "invert": False}


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


def input_shape(spec: dict[str, Any]) -> tuple[int, int, int]:
    """Per-image input shape ``(C, H, W)`` of a preprocessing spec."""
    channels = 1 if spec.get("color_mode", "L") == "L" else 3
    return channels, int(spec["height"]), int(spec["width"])


def _body(request: Any) -> bytes:
    """The raw body of one request (TorchServe puts it under "data" or "body")."""
    if isinstance(request, dict):
        payload = request.get("data")
        if payload is None:
            payload = request.get("body")
    else:
        payload = request
    if payload is None:
        raise _request_error(400, "empty request body: send an image or a .npy float32 [N,C,H,W]")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode("utf-8", errors="surrogateescape")
    else:
        raise _request_error(
            415, "body is not an image or a .npy array (got a decoded JSON value; send raw bytes)"
        )
    if not data:
        raise _request_error(400, "empty request body: send an image or a .npy float32 [N,C,H,W]")
    return data


def parse_npy(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """``.npy`` bytes → float32 ``[N, *shape]``; 4xx ValueError on anything else."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for bad files
        raise _request_error(400, f"invalid .npy body: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise _request_error(400, "invalid .npy body: not a single array")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise _request_error(400, f".npy dtype must be float32, got {arr.dtype}")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or arr.shape[0] < 1:
        want = ",".join(map(str, shape))
        raise _request_error(400, f".npy shape must be [N,{want}] with N >= 1, got {list(arr.shape)}")
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
            415, "body is neither an image Pillow can read nor a .npy float32 [N,C,H,W] array"
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
    """TorchServe entry point: ``initialize(context)`` once, then ``handle(data, context)`` per batch.

    Serves any of triserve's image classifiers (the name is historical): see the module doc.
    """

    def __init__(self) -> None:
        self.model: torch.jit.ScriptModule | None = None
        self.device = torch.device("cpu")
        self.spec: dict[str, Any] = dict(SPEC_DEFAULTS)
        self.shape: tuple[int, int, int] = (1, 1, 1)
        self.labels: list[str] | None = None
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
        if not os.path.isfile(spec_path):
            raise RuntimeError(
                f"{PREPROCESS_FILE} not in the archive ({model_dir}): rebuild it with triserve-train"
            )
        with open(spec_path) as fh:
            self.spec = {**SPEC_DEFAULTS, **json.load(fh)}
        self.shape = input_shape(self.spec)
        labels_path = os.path.join(model_dir, LABELS_FILE)
        if os.path.isfile(labels_path):
            with open(labels_path) as fh:
                names = json.load(fh)
            self.labels = [str(names[str(i)]) for i in range(len(names))]
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        threading.Thread(target=preload_captum, name="captum-preload", daemon=True).start()
        self.initialized = True
        logger.info(
            "loaded %s on %s; preprocessing %s; labels %s", model_path, self.device, self.spec, self.labels
        )

    def label(self, index: int) -> int | str:
        """The answer to a raw image: a numeric label as an int (TorchServe renders ``7``), a name as a
        JSON string (``"Ankle boot"``)."""
        name = self.labels[index] if self.labels is not None and index < len(self.labels) else str(index)
        return int(name) if name.isdigit() else json.dumps(name)

    def _parse(self, request: Any) -> tuple[np.ndarray, bool]:
        """(inputs [n,C,H,W], is_npy) of one request."""
        data = _body(request)
        if data.startswith(NPY_MAGIC):
            return parse_npy(data, self.shape), True
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
        explain = explain_indices(context, len(data))
        for idx in explain:  # requests that came through /explanations (see "Explanations" below)
            results[idx] = self._explain(data[idx], context, idx)
        parsed: list[tuple[int, np.ndarray, bool]] = []
        for idx, request in enumerate(data):
            if idx in explain:
                continue
            try:
                x, is_npy = self._parse(request)
                parsed.append((idx, x, is_npy))
            except Exception as exc:  # one bad request must not fail the batch
                results[idx] = self._error(context, idx, *_error_of(exc))
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
                    results[idx] = self.label(int(part[0].argmax()))
                    _set_content_type(context, idx, "application/json")
        return results

    def _explain(self, request: Any, context: Any, idx: int) -> Any:
        """One /explanations request: Integrated Gradients of its images, or its 4xx error."""
        assert self.model is not None
        try:
            x, _ = self._parse(request)
            return explain_images(self.model, x, self.spec, context, idx, self.device)
        except Exception as exc:  # one bad request must not fail the batch
            code, message = _error_of(exc)
            if not isinstance(exc, ValueError):
                logger.exception("explanation failed")
                message = f"cannot explain request: {type(exc).__name__}: {exc}"
            return self._error(context, idx, code, message)

    @staticmethod
    def _error(context: Any, idx: int, code: int, message: str) -> dict[str, Any]:
        logger.info("request %d rejected (%d): %s", idx, code, message)
        if context is not None and hasattr(context, "set_response_status"):
            context.set_response_status(code, _PHRASES.get(code, "Error"), idx)
        _set_content_type(context, idx, "application/json")
        return {"code": code, "type": _TYPES.get(code, "Error"), "message": message}


def _error_of(exc: Exception) -> tuple[int, str]:
    """(status, message) of a request's failure: our 4xx ValueError(code, message), else 422."""
    if isinstance(exc, ValueError) and len(exc.args) == 2 and isinstance(exc.args[0], int):
        return exc.args[0], str(exc.args[1])
    return 422, f"cannot process request body: {exc}"


def _set_content_type(context: Any, idx: int, value: str) -> None:
    if context is not None and hasattr(context, "set_response_content_type"):
        with contextlib.suppress(AttributeError, IndexError, TypeError):
            context.set_response_content_type(idx, value)


# =====================================================================================================
# Explanations: TorchServe's ``POST /explanations/{model}`` answered with Captum Integrated Gradients
# =====================================================================================================
#
# TorchServe's frontend marks each request that came in through ``/explanations`` with the request
# header ``explain: True``; ``handle`` answers those here, per request (explanations and predictions
# may share a batch). The body is an image or a ``.npy`` float32 [N,C,H,W], as for predictions, with
# at most MAX_EXPLAIN_IMAGES images. Optional request headers:
#
# * ``X-Explain-Steps``: Integrated Gradients steps, 1..MAX_EXPLAIN_STEPS (default DEFAULT_EXPLAIN_STEPS);
# * ``X-Explain-Target``: the class index to explain (default: each image's predicted class).
#
# Cost is bounded: steps x images forward+backward passes, run in chunks of EXPLAIN_INTERNAL_BATCH rows.
# The baseline is the input's background (pixel value 0 after preprocessing: ``-mean / std``).
# The answer is JSON::
#
#     {"method": "integrated_gradients", "steps": 32, "baseline": [-0.4242],
#      "explanations": [{"target": 7, "logits": [10 floats], "attributions": [C][H][W] floats,
#                        "convergence_delta": 0.0012}]}
#
# captum (~3 s to import, matplotlib included) is imported by a background thread when the worker starts,
# so neither predictions nor the first explanation wait for it.

EXPLAIN_HEADER = "explain"
EXPLAIN_STEPS_HEADER = "x-explain-steps"
EXPLAIN_TARGET_HEADER = "x-explain-target"
DEFAULT_EXPLAIN_STEPS = 32
MAX_EXPLAIN_STEPS = 256
MAX_EXPLAIN_IMAGES = 4
EXPLAIN_INTERNAL_BATCH = 64


def preload_captum() -> None:
    """Import captum off the request path (the first explanation would otherwise pay for it)."""
    try:
        importlib.import_module("captum.attr")
    except Exception:  # explanations will answer the error; predictions do not need captum
        logger.warning("captum cannot be imported: explanations will fail", exc_info=True)


def _request_header(context: Any, idx: int, name: str) -> str | None:
    """Request header ``name`` (case-insensitive) of request ``idx``, if TorchServe passed it."""
    getter = getattr(context, "get_all_request_header", None)
    if getter is None:
        return None
    try:
        headers = getter(idx) or {}
    except (IndexError, KeyError, AttributeError, TypeError):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and isinstance(value, str) and key.lower() == name:
            return value
    return None


def explain_indices(context: Any, count: int) -> set[int]:
    """Indices of the batch's requests that came in through ``/explanations``."""
    return {idx for idx in range(count) if _request_header(context, idx, EXPLAIN_HEADER) == "True"}


def _int_header(context: Any, idx: int, name: str, low: int, high: int, default: int | None) -> int | None:
    raw = _request_header(context, idx, name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _request_error(400, f"header {name} must be an integer, got '{raw[:40]}'") from None
    if not low <= value <= high:
        raise _request_error(400, f"header {name} must be between {low} and {high}, got {value}")
    return value


def explain_images(
    model: torch.jit.ScriptModule,
    x: np.ndarray,
    spec: dict[str, Any],
    context: Any,
    idx: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Integrated Gradients attributions of the images ``x`` (float32 [N,C,H,W]) for request ``idx``."""
    if x.shape[0] > MAX_EXPLAIN_IMAGES:
        raise _request_error(
            413, f"explanations take at most {MAX_EXPLAIN_IMAGES} images per request, got {x.shape[0]}"
        )
    steps = _int_header(context, idx, EXPLAIN_STEPS_HEADER, 1, MAX_EXPLAIN_STEPS, DEFAULT_EXPLAIN_STEPS)
    assert steps is not None
    from captum.attr import IntegratedGradients  # preloaded by preload_captum()

    inputs = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    with torch.no_grad():
        logits = model(inputs)
    classes = int(logits.shape[1])
    chosen = _int_header(context, idx, EXPLAIN_TARGET_HEADER, 0, classes - 1, None)
    targets = [int(t) for t in logits.argmax(dim=1)] if chosen is None else [chosen] * x.shape[0]
    channels = x.shape[1]
    mean = [float(m) for m in spec["mean"]] * (channels if len(spec["mean"]) == 1 else 1)
    std = [float(s) for s in spec["std"]] * (channels if len(spec["std"]) == 1 else 1)
    baseline = [-m / s for m, s in zip(mean, std, strict=True)]
    baselines = torch.tensor(baseline, dtype=inputs.dtype, device=device).view(1, channels, 1, 1)
    attributions, delta = IntegratedGradients(model).attribute(
        inputs.requires_grad_(),
        baselines=baselines.expand_as(inputs).contiguous(),
        target=targets,
        n_steps=steps,
        internal_batch_size=EXPLAIN_INTERNAL_BATCH,
        return_convergence_delta=True,
    )
    _set_content_type(context, idx, "application/json")
    return {
        "method": "integrated_gradients",
        "steps": steps,
        "baseline": baseline,
        "explanations": [
            {
                "target": target,
                "logits": [float(v) for v in row],
                "attributions": attr.detach().cpu().float().numpy().tolist(),
                "convergence_delta": float(d),
            }
            for target, row, attr, d in zip(
                targets, logits.cpu().float().numpy(), attributions, delta, strict=True
            )
        ],
    }
