"""``triserve-train``: data → training → TorchScript/.mar/ONNX/Paddle exports → parity → model store.

Also ``--quantize-from V`` (an INT8 version of FP32 version V) and ``--repack`` (rebuild a version's
``.mar`` with the current handler, weights untouched). The job: :func:`triserve_trainer.runner.run_job`.

Exit codes: 0 success; 1 parity (or --min-accuracy) failed, nothing published; 2 bad data, options,
checkpoint, a full disk or an existing version without --force.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

from triserve_trainer.config import JobConfig, build_parser
from triserve_trainer.job import JobError, JobResult
from triserve_trainer.runner import run_job

__all__ = ["JobConfig", "JobError", "JobResult", "build_parser", "main", "run_job"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    logging.getLogger("triserve_trainer").setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        result = run_job(JobConfig.from_args(args))
    except JobError as exc:
        print(f"triserve-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "triserve-train: interrupted (resume with --resume <work-dir>/<model>/checkpoints)",
            file=sys.stderr,
        )
        return 130
    m = result.manifest
    print(
        json.dumps(
            {
                "version_dir": str(result.version_dir),
                "split": m.data.split,
                "held_out_accuracy": m.metrics.accuracy,
                "held_out_loss": m.metrics.loss,
                "parity": m.parity.model_dump(),
                "macs_per_image": m.model.macs_per_image,
                "parameters": m.model.parameters,
                "backends": m.backends,
                "artifact_bytes": {k: sum(f.size_bytes for f in a.files) for k, a in m.artifacts.items()},
                "training_seconds": m.metrics.training_seconds,
                "job_seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    return 0
