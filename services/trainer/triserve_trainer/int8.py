"""``triserve-train --model mnist --quantize-from 1``: an INT8 version of an FP32 version, as job steps.

Calibrated on the first ``--calibration-images`` images of the FP32 version's training split (same data
folder, split and seed as recorded in its manifest); judged on its held-out split against the FP32
version: held-out accuracy (by default at most 0.5 points lower, ``--int8-max-drop``) and agreement of the
predicted classes (by default ≥ 99.5 %, ``--int8-min-agreement``); otherwise nothing is published (exit 1).
Paddle has no INT8 artifact (see :data:`PADDLE_INT8_UNAVAILABLE`): the manifest's ``backends`` lists
the runtimes that serve the version.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from triserve_common.errors import ArtifactIntegrityError
from triserve_common.manifest import Metrics, ModelInfo, Parity, read_manifest, verify_artifact
from triserve_trainer.job import (
    JobContext,
    JobError,
    Step,
    held_out_inputs,
    load_data,
    prepare,
    publish_version,
    version_manifest,
    write_manifest_file,
    write_summary,
)
from triserve_trainer.record import BackendQuantization, QuantizationRecord
from triserve_trainer.store import (
    artifact_entries,
)

log = logging.getLogger("triserve_trainer")

INT8_BACKENDS = ["onnx", "torchserve"]
PADDLE_INT8_UNAVAILABLE = (
    "no working offline CPU route in paddlepaddle 3.3: paddle.quantization.PTQ.convert() followed by "
    "paddle.jit.save fails under PIR for a dynamic batch dimension ('shape[0] = -1' in the quant/dequant "
    "format layer); Paddle Inference's oneDNN INT8 pass needs such a quantised program"
)


def load_reference(ctx: JobContext) -> None:
    """Read and verify the FP32 version; rebuild its network from its ONNX weights; check it is the same."""
    from triserve_trainer.parity import run_torchscript
    from triserve_trainer.quantize import folded_from_onnx

    cfg = ctx.config
    ref_dir = cfg.store / cfg.model / str(cfg.quantize_from)
    try:
        ref = read_manifest(ref_dir)
        for kind in ("onnx", "torchscript"):
            verify_artifact(ref, ref_dir, kind)
    except (OSError, ValueError, ArtifactIntegrityError) as exc:
        raise JobError(f"--quantize-from {cfg.quantize_from}: {exc}") from exc
    if ref.data.seed != cfg.seed:
        raise JobError(f"{ref_dir} was trained with --seed {ref.data.seed}; pass the same seed to calibrate")
    x = held_out_inputs(ctx)
    ref_logits = run_torchscript(ref_dir / "model.pt", x)
    net = folded_from_onnx(ref_dir / "model.onnx")
    with torch.no_grad():
        rebuilt = net(torch.from_numpy(x)).numpy()
    diff = float(np.abs(rebuilt - ref_logits).max())
    if diff > cfg.tolerance:
        raise JobError(f"network rebuilt from {ref_dir / 'model.onnx'} differs from model.pt by {diff}", 1)
    ctx.extra.update(ref=ref, ref_dir=ref_dir, ref_logits=ref_logits, net=net)
    log.info(
        "FP32 reference %s: accuracy %.4f; rebuilt network matches (max diff %.2g)",
        ref_dir,
        ref.metrics.accuracy,
        diff,
    )


def calibration_inputs(ctx: JobContext) -> npt.NDArray[np.float32]:
    from triserve_trainer.train import normalise, to_tensor

    assert ctx.data is not None
    images = ctx.data.train_images[: ctx.config.calibration_images]
    return normalise(to_tensor(images), ctx.config.spec.preprocessing()).numpy()


def quantize_artifacts(ctx: JobContext) -> None:
    """INT8 model.onnx (ONNX Runtime QDQ) and model.pt / <name>.mar (torch.ao, x86) in the staging folder."""
    from triserve_trainer.export_mar import ArchiveError, build_mar
    from triserve_trainer.export_torch import check_onnx
    from triserve_trainer.quantize import quantize_onnx, quantize_torch

    spec, ref_dir = ctx.config.spec, ctx.extra["ref_dir"]
    calibration = calibration_inputs(ctx)
    onnx_path = quantize_onnx(
        ref_dir / "model.onnx", calibration, ctx.staging / "model.onnx", ctx.config.model_work_dir / "int8"
    )
    check_onnx(onnx_path)
    ts_path = quantize_torch(ctx.extra["net"], calibration, ctx.staging / "model.pt")
    try:
        mar = build_mar(ts_path, ctx.staging, spec.name, ctx.version, spec.preprocessing(), spec.labels)
    except ArchiveError as exc:
        raise JobError(str(exc), 1) from exc
    ctx.paths = {"torchscript": ts_path, "mar": mar, "onnx": onnx_path}
    shutil.rmtree(ctx.config.model_work_dir / "int8", ignore_errors=True)


def judge(ctx: JobContext) -> None:
    """Accuracy and agreement of each INT8 artifact against the FP32 version on the held-out images."""
    from triserve_trainer.parity import run_onnx, run_torchscript

    assert ctx.data is not None
    x, labels = held_out_inputs(ctx), np.asarray(ctx.data.test_labels)
    ref_logits = ctx.extra["ref_logits"]
    ref_acc = float((ref_logits.argmax(1) == labels).mean())
    outputs = {
        "onnx": run_onnx(ctx.paths["onnx"], x),
        "torchserve": run_torchscript(ctx.paths["torchscript"], x),
    }
    figures: dict[str, BackendQuantization] = {}
    # the INT8 model files themselves (the .mar around model.pt changes size with every handler repack)
    sizes = {"onnx": ctx.paths["onnx"].stat().st_size, "torchserve": ctx.paths["torchscript"].stat().st_size}
    for name, logits in outputs.items():
        figures[name] = BackendQuantization(
            method="",
            accuracy=float((logits.argmax(1) == labels).mean()),
            agreement_with_reference=float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
            max_abs_logit_diff_vs_reference=float(np.abs(logits - ref_logits).max()),
            size_bytes=sizes[name],
        )
    cfg = ctx.config
    passed = all(
        f.accuracy >= ref_acc - cfg.int8_max_drop and f.agreement_with_reference >= cfg.int8_min_agreement
        for f in figures.values()
    )
    ctx.parity = Parity(
        images=len(labels),
        class_agreement={k: f.agreement_with_reference for k, f in figures.items()},
        max_abs_logit_diff={k: f.max_abs_logit_diff_vs_reference for k, f in figures.items()},
        tolerance=ctx.config.int8_max_drop,
        passed=passed,
    )
    ctx.predictions = [int(c) for c in outputs["torchserve"].argmax(1)]
    ctx.extra["loss"] = float(
        torch.nn.functional.cross_entropy(
            torch.from_numpy(outputs["torchserve"]), torch.from_numpy(labels.astype(np.int64))
        )
    )
    ctx.extra.update(figures=figures, ref_acc=ref_acc, cross=_cross(outputs))
    log.info(
        "INT8 vs FP32 v%s (accuracy %.4f): %s; torch vs onnx INT8: %s",
        ctx.config.quantize_from,
        ref_acc,
        {k: f.model_dump(exclude={"method"}) for k, f in figures.items()},
        ctx.extra["cross"],
    )
    if not passed:
        ctx.keep_staging = True
        raise JobError(
            f"INT8 version rejected (accuracy drop > {ctx.config.int8_max_drop:.1%} or agreement < "
            f"{ctx.config.int8_min_agreement:.1%}): {figures}; nothing published",
            1,
        )


def _cross(outputs: dict[str, npt.NDArray[np.float32]]) -> dict[str, float]:
    a, b = outputs["torchserve"], outputs["onnx"]
    return {
        "class_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(a - b).max()),
    }


def write_int8_manifest(ctx: JobContext) -> None:
    """``manifest.json`` of the INT8 version: backends, quantisation details, figures vs the FP32 version."""
    from triserve_trainer.quantize import quantization_methods

    cfg, data, ref = ctx.config, ctx.data, ctx.extra["ref"]
    assert data is not None
    methods, figures = quantization_methods(), ctx.extra["figures"]
    for name, fig in figures.items():
        fig.method = methods[name]
    accuracy = figures["torchserve"].accuracy
    write_summary(ctx, held_out_accuracy=accuracy, int8_torch_vs_onnx=ctx.extra["cross"])
    ctx.manifest = version_manifest(
        ctx,
        metrics=Metrics(accuracy=accuracy, loss=ctx.extra["loss"], epochs=0, training_seconds=0.0),
        model=ModelInfo(
            architecture=f"INT8 of v{cfg.quantize_from}: {ref.model.architecture}",
            parameters=ref.model.parameters,
            macs_per_image=ref.model.macs_per_image,
        ),
        artifacts=artifact_entries(
            ctx.staging,
            ctx.paths["mar"].name,
            kinds=["torchserve", "onnx", "torchscript"],
            formats={"onnx": "onnx-qdq-int8", "torchscript": "torchscript-int8"},
        ),
        backends=INT8_BACKENDS,
        quantization=QuantizationRecord(
            reference_version=str(cfg.quantize_from),
            reference_accuracy=ctx.extra["ref_acc"],
            calibration={
                "images": min(cfg.calibration_images, len(data.train_labels)),
                "source": f"first images of the {data.split} training split (seed {data.seed})",
                "method": "MinMax (onnx) / Histogram (torch)",
            },
            held_out_images=len(data.test_labels),
            backends=figures,
            not_quantized={"paddle": PADDLE_INT8_UNAVAILABLE},
            acceptance=f"each INT8 artifact: held-out accuracy >= FP32 - {cfg.int8_max_drop:.1%} and class "
            f"agreement with FP32 >= {cfg.int8_min_agreement:.1%} (parity.tolerance: the allowed drop)",
            int8_torch_vs_onnx=ctx.extra["cross"],
        ),
    )
    write_manifest_file(ctx.staging, ctx.manifest)


INT8_STEPS: Sequence[tuple[str, Step]] = (
    ("prepare", prepare),
    ("data", load_data),
    ("reference", load_reference),
    ("quantize", quantize_artifacts),
    ("judge", judge),
    ("manifest", write_int8_manifest),
    ("publish", publish_version),
)
