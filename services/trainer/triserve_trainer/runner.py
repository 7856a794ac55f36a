"""``run_job(config)``: the step list of the configuration's mode, run in order over one context.

Modes: training (:data:`triserve_trainer.job.TRAIN_STEPS`), INT8 quantisation
(:data:`triserve_trainer.int8.INT8_STEPS`) and ``.mar`` repack (:data:`triserve_trainer.repack.REPACK_STEPS`).
On any failure nothing is published and the staging folder is removed (kept only when parity or the
accuracy floor failed, for inspection); a full disk becomes one :class:`JobError` line.
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from triserve_trainer.config import JobConfig
from triserve_trainer.job import TRAIN_STEPS, JobContext, JobError, JobResult, Step

log = logging.getLogger("triserve_trainer")


def steps_for(cfg: JobConfig) -> Sequence[tuple[str, Step]]:
    """The step list of this configuration's mode (train, INT8 quantisation or .mar repack)."""
    if cfg.repack:
        from triserve_trainer.repack import REPACK_STEPS

        return REPACK_STEPS
    if cfg.quantize_from is not None:
        from triserve_trainer.int8 import INT8_STEPS

        return INT8_STEPS
    return TRAIN_STEPS


def run_job(cfg: JobConfig) -> JobResult:
    """Run the steps of ``cfg``'s mode; on failure nothing is published and the staging folder goes."""
    _quiet_third_party()
    ctx = JobContext(cfg)
    file_log: logging.Handler | None = None
    name = ""
    try:
        for name, step in steps_for(cfg):
            log.info("step %s", name)
            step(ctx)
            if name == "prepare" and ctx.staging != Path() and not cfg.repack:
                file_log = _file_logger(ctx.staging / "training" / "train.log")
    except Exception as exc:
        if no_space(exc):
            raise JobError(
                f"no space left on the model store's disk during step '{name}' ({_first_line(exc)}); "
                f"nothing was published and {ctx.target} is unchanged"
            ) from exc
        raise
    finally:
        if file_log is not None:
            logging.getLogger("triserve_trainer").removeHandler(file_log)
            file_log.close()
        if ctx.staging != Path() and ctx.staging.exists() and not ctx.keep_staging:
            shutil.rmtree(ctx.staging, ignore_errors=True)
    assert ctx.manifest is not None and ctx.parity is not None
    return JobResult(ctx.manifest, ctx.target, ctx.parity, ctx.predictions)


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it, e.g. a failed torch-model-archiver) is a full disk."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    lines = (
        [line for line in str(exc).splitlines() if "No space left" in line] or str(exc).splitlines() or [""]
    )
    return lines[0].strip()[:300]


class _StagingLog(logging.FileHandler):
    """train.log in the staging folder; a full disk must not turn every log line into a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _file_logger(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _StagingLog(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("triserve_trainer").addHandler(handler)
    return handler


def _quiet_third_party() -> None:
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR if name.startswith("torch") else logging.WARNING)
