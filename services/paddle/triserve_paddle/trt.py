"""Paddle-TensorRT for PIR models (``inference.json``): ``paddle.tensorrt.convert``, cached on disk.

Paddle 3 runs TensorRT on PIR models in two phases (Paddle Inference 3.0, "GPU TensorRT 加速推理",
https://paddlepaddle.org.cn/inference/v3.0/guides/nv_gpu_infer/gpu_trt_infer.html, API:
https://paddlepaddle.org.cn/inference/v3.0/api_reference/python_api_doc/Paddle_TensorRT_interface.html):
``paddle.tensorrt.convert(model, TensorRTConfig)`` replaces the subgraphs TensorRT can run with
``tensorrt_engine`` ops, builds their engines for a min/opt/max input range and saves the program
(``<save_model_dir>.json/.pdiparams``); a ``paddle.inference.Config`` on that program with
``enable_use_gpu`` then runs it. ``Config.enable_tensorrt_engine`` does not apply to PIR programs.

The converted program is kept in a folder keyed by everything that invalidates it (model files,
Paddle/TensorRT versions, GPU, precision, shapes), so a restart reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from triserve_common.errors import TriserveError
from triserve_common.manifest import TensorSpec
from triserve_paddle.settings import PaddleSettings

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
PREFIX = "model"


@dataclass(frozen=True)
class TrtPlan:
    """What ``paddle.tensorrt.convert`` is asked for."""

    shapes: list[tuple[list[int], list[int], list[int]]]
    """(min, opt, max) shape per model input, in feed order."""
    precision: Literal["fp32", "fp16"]
    workspace_bytes: int
    min_subgraph_size: int


Converter = Callable[[Path, TrtPlan, Path], None]
"""(model .json, plan, output prefix) → writes ``<prefix>.json`` and ``<prefix>.pdiparams``."""


def _batch_shape(spec: TensorSpec, batch: int) -> list[int]:
    dims = [batch if i == 0 and d == -1 else d for i, d in enumerate(spec.shape)]
    if any(d < 0 for d in dims):
        raise TriserveError(
            f"input '{spec.name}' {spec.shape}: TensorRT needs every non-batch dimension fixed"
        )
    return dims


def trt_plan(settings: PaddleSettings, inputs: list[TensorSpec]) -> TrtPlan:
    """Dynamic batch range from the settings (opt clamped into [min, max]) for every input."""
    low, opt, high = settings.trt_batch_range()
    return TrtPlan(
        shapes=[(_batch_shape(s, low), _batch_shape(s, opt), _batch_shape(s, high)) for s in inputs],
        precision=settings.trt_precision,
        workspace_bytes=settings.trt_workspace_bytes,
        min_subgraph_size=settings.trt_min_subgraph_size,
    )


def cache_key(plan: TrtPlan, model_digests: list[str], versions: dict[str, str]) -> str:
    """Folder name for a converted program: a hash of the plan, the model files and the versions."""
    blob = json.dumps({"plan": asdict(plan), "model": model_digests, "versions": versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _home(path: Path) -> Iterator[None]:
    """Older Paddle writes the serialized engines under ``~/.pp_trt_cache``: keep them with the model."""
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old


def paddle_convert(model_file: Path, plan: TrtPlan, prefix: Path) -> None:
    """Run ``paddle.tensorrt.convert`` (needs a GPU, TensorRT and the ``tensorrt`` package).

    The conversion builds its engines on GPU 0 of the visible ones (Paddle's converter uses
    ``CUDAPlace(0)``): choose the GPU with ``CUDA_VISIBLE_DEVICES``.
    """
    import paddle.tensorrt.export as pt

    inputs = [pt.Input(min_input_shape=tuple(lo), optim_input_shape=tuple(opt), max_input_shape=tuple(hi))
              for lo, opt, hi in plan.shapes]
    config = pt.TensorRTConfig(inputs=inputs, min_subgraph_size=plan.min_subgraph_size)
    config.save_model_dir = str(prefix)
    config.precision_mode = pt.PrecisionMode.FP16 if plan.precision == "fp16" else pt.PrecisionMode.FP32
    config.workspace_size = plan.workspace_bytes
    with _home(prefix.parent):
        pt.convert(str(model_file), config)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two processes sharing the cache never convert into the same folder."""
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def converted_files(folder: Path) -> tuple[Path, Path]:
    """``(model .json, .pdiparams)`` of a converted program folder."""
    return folder / f"{PREFIX}.json", folder / f"{PREFIX}.pdiparams"


def prepare(model_file: Path, plan: TrtPlan, folder: Path, convert: Converter) -> tuple[Path, Path, bool]:
    """The converted program in ``folder``: reused when complete, else converted. Returns the two
    files and whether they came from the cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    model_json, params = converted_files(folder)
    with _locked(folder.parent / f"{folder.name}.lock"):
        if (folder / MARKER).is_file() and model_json.is_file() and params.is_file():
            log.info("Paddle-TensorRT: reusing the converted program in %s", folder)
            return model_json, params, True
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        log.info("Paddle-TensorRT: converting %s (%s) into %s", model_file, plan, folder)
        convert(model_file, plan, folder / PREFIX)
        if not (model_json.is_file() and params.is_file()):
            missing = f"{model_json.name}/{params.name}"
            raise TriserveError(f"paddle.tensorrt.convert wrote no {missing} in {folder}")
        (folder / MARKER).write_text(json.dumps(asdict(plan)) + "\n")
    return model_json, params, False


def invalidate(folder: Path) -> None:
    """Drop a converted program that failed to load (the next start converts again)."""
    log.warning("Paddle-TensorRT: discarding the converted program in %s", folder)
    shutil.rmtree(folder, ignore_errors=True)


def tensorrt_version() -> str:
    """Version of the ``tensorrt`` Python package the converter uses ("none" when absent)."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # absent, or its libraries fail to load
        return "none"


def tensorrt_op_count(model_json: Path) -> int:
    """How many ``tensorrt_engine`` ops the converted program has (0: TensorRT took no subgraph)."""
    return model_json.read_text(errors="replace").count("tensorrt_engine")
