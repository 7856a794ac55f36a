"""Parity of the exported artifacts: TorchScript (reference) vs ONNX Runtime vs Paddle Inference.

:func:`check_parity` takes artifact paths, so tests can feed it a perturbed artifact and see it fail.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt

from triserve_common.manifest import Parity

DEFAULT_TOLERANCE = 1e-4
REFERENCE = "torchscript"


class ParityError(Exception):
    """The exported artifacts disagree (raised by the CLI when parity fails)."""


def run_torchscript(path: Path, x: npt.NDArray[np.float32], batch: int = 500) -> npt.NDArray[np.float32]:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    with torch.no_grad():
        parts = [model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32)


def run_onnx(path: Path, x: npt.NDArray[np.float32], batch: int = 500) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    parts = [sess.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32)


def run_paddle(
    model_file: Path, params_file: Path, x: npt.NDArray[np.float32], batch: int = 500
) -> npt.NDArray[np.float32]:
    from paddle import inference

    config = inference.Config(str(model_file), str(params_file))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(2)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    in_handle = predictor.get_input_handle("input")
    out_handle = predictor.get_output_handle(predictor.get_output_names()[0])
    parts = []
    for i in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[i : i + batch])
        in_handle.reshape(list(chunk.shape))
        in_handle.copy_from_cpu(chunk)
        predictor.run()
        parts.append(out_handle.copy_to_cpu())
    return np.concatenate(parts).astype(np.float32)


def check_parity(
    torchscript: Path,
    onnx_model: Path,
    paddle_model: Path,
    paddle_params: Path,
    x: npt.NDArray[np.float32],
    tolerance: float = DEFAULT_TOLERANCE,
) -> Parity:
    """Run the three artifacts on the normalised inputs ``x`` [N,1,28,28].

    ``passed`` when ONNX Runtime and Paddle Inference predict the TorchScript class for every image
    and their logits differ from TorchScript's by at most ``tolerance``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    ref = run_torchscript(torchscript, x)
    others = {"onnx": run_onnx(onnx_model, x), "paddle": run_paddle(paddle_model, paddle_params, x)}
    ref_cls = ref.argmax(1)
    agreement: dict[str, float] = {}
    max_diff: dict[str, float] = {}
    for name, logits in others.items():
        if logits.shape != ref.shape:
            agreement[name] = 0.0
            max_diff[name] = float("inf")
            continue
        agreement[name] = float((logits.argmax(1) == ref_cls).mean())
        max_diff[name] = float(np.abs(logits - ref).max())
    passed = all(a == 1.0 for a in agreement.values()) and all(d <= tolerance for d in max_diff.values())
    return Parity(
        images=int(x.shape[0]),
        class_agreement=agreement,
        max_abs_logit_diff=max_diff,
        tolerance=tolerance,
        passed=passed,
    )
