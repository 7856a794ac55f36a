"""TorchServe handler for triserve's image classifiers (packaged into every ``<model>.mar``).

Model-generic: everything model-specific comes from files packed in the archive by the trainer —
``preprocess.json`` (colour mode, size, scale, mean/std: the manifest's preprocessing) and
``index_to_name.json`` (TorchServe's convention for class names, ``{"0": "T-shirt/top", ...}``).
Imports only what a TorchServe worker has: stdlib, numpy, Pillow and torch, and the modules packed
beside this one (TorchServe puts the archive's folder on the worker's ``sys.path``):
``handler_requests.py`` (a request's body → model input; per-request 4xx answers) and
``handler_explain.py`` (``/explanations`` with Captum Integrated Gradients).

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

import io
import json
import logging
import os
import threading
from typing import Any

import numpy as np
import torch
from handler_explain import explain_images, explain_indices, preload_captum
from handler_requests import (
    MAX_IMAGE_PIXELS,
    error_answer,
    error_of,
    input_shape,
    parse_request,
    set_content_type,
)
from PIL import Image

logger = logging.getLogger(__name__)

PREPROCESS_FILE = "preprocess.json"
LABELS_FILE = "index_to_name.json"
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


def read_spec(model_dir: str) -> dict[str, Any]:
    """The archive's preprocessing (``preprocess.json``) over :data:`SPEC_DEFAULTS`."""
    spec_path = os.path.join(model_dir, PREPROCESS_FILE)
    if not os.path.isfile(spec_path):
        raise RuntimeError(
            f"{PREPROCESS_FILE} not in the archive ({model_dir}): rebuild it with triserve-train"
        )
    with open(spec_path) as fh:
        return {**SPEC_DEFAULTS, **json.load(fh)}


def read_labels(model_dir: str) -> list[str] | None:
    """The archive's class names (``index_to_name.json``), if it has them."""
    labels_path = os.path.join(model_dir, LABELS_FILE)
    if not os.path.isfile(labels_path):
        return None
    with open(labels_path) as fh:
        names = json.load(fh)
    return [str(names[str(i)]) for i in range(len(names))]


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
        self.spec = read_spec(model_dir)
        self.shape = input_shape(self.spec)
        self.labels = read_labels(model_dir)
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
        return parse_request(request, self.spec, self.shape)

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
        for idx in explain:  # requests that came through /explanations (handler_explain.py)
            results[idx] = self._explain(data[idx], context, idx)
        parsed: list[tuple[int, np.ndarray, bool]] = []
        for idx, request in enumerate(data):
            if idx in explain:
                continue
            try:
                x, is_npy = self._parse(request)
                parsed.append((idx, x, is_npy))
            except Exception as exc:  # one bad request must not fail the batch
                results[idx] = self._error(context, idx, *error_of(exc))
        if parsed:
            self._predict(parsed, context, results)
        return results

    def _predict(self, parsed: list[tuple[int, np.ndarray, bool]], context: Any, results: list[Any]) -> None:
        """One forward pass over the parsed requests' images; each request's answer into ``results``."""
        batch = np.concatenate([x for _, x, _ in parsed])
        try:
            logits = self._forward(batch)
        except Exception as exc:  # pragma: no cover - model failure, not a client error
            logger.exception("forward pass failed")
            for idx, _, _ in parsed:
                results[idx] = self._error(context, idx, 500, f"inference failed: {exc}")
            return
        start = 0
        for idx, x, is_npy in parsed:
            part = logits[start : start + x.shape[0]]
            start += x.shape[0]
            if is_npy:
                buf = io.BytesIO()
                np.save(buf, part.astype(np.float32), allow_pickle=False)
                results[idx] = buf.getvalue()
                set_content_type(context, idx, "application/octet-stream")
            else:
                results[idx] = self.label(int(part[0].argmax()))
                set_content_type(context, idx, "application/json")

    def _explain(self, request: Any, context: Any, idx: int) -> Any:
        """One /explanations request: Integrated Gradients of its images, or its 4xx error."""
        assert self.model is not None
        try:
            x, _ = self._parse(request)
            return explain_images(self.model, x, self.spec, context, idx, self.device)
        except Exception as exc:  # one bad request must not fail the batch
            code, message = error_of(exc)
            if not isinstance(exc, ValueError):
                logger.exception("explanation failed")
                message = f"cannot explain request: {type(exc).__name__}: {exc}"
            return self._error(context, idx, code, message)

    @staticmethod
    def _error(context: Any, idx: int, code: int, message: str) -> dict[str, Any]:
        logger.info("request %d rejected (%d): %s", idx, code, message)
        return error_answer(context, idx, code, message)
