"""Small real runs of the job, shared by the trainer tests (a few hundred images, 1-2 epochs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from triserve_trainer.config import JobConfig, build_parser
from triserve_trainer.job import JobResult
from triserve_trainer.runner import run_job

SMALL = ["--limit-train", "1200", "--limit-test", "200", "--epochs", "2", "--no-progress"]
TINY = ["--limit-train", "256", "--limit-test", "100", "--epochs", "1", "--no-progress"]


def config(args: list[str]) -> JobConfig:
    """The JobConfig ``triserve-train ARGS`` would run."""
    return JobConfig.from_args(build_parser().parse_args(args))


@dataclass
class Job:
    result: JobResult
    store: Path
    work: Path
    args: list[str]

    @property
    def checkpoints(self) -> Path:
        return self.work / self.result.manifest.name / "checkpoints"


def run_small(root: Path, data_dir: Path | None, extra: list[str]) -> Job:
    store, work = root / "store", root / "work"
    args = ["--store", str(store), "--work-dir", str(work), *extra]
    if data_dir is not None:
        args = ["--data-dir", str(data_dir), *args]
    return Job(run_job(config(args)), store, work, args)


@pytest.fixture(scope="session")
def job(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Job:
    """mnist v1 trained on 1,200 t10k images for 2 epochs."""
    return run_small(tmp_path_factory.mktemp("job"), mnist_dir, SMALL)


@pytest.fixture(scope="session")
def fashion_job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """fashion v1 from Debian's Fashion-MNIST (found by the data lookup), 1,200 images, 2 epochs."""
    return run_small(tmp_path_factory.mktemp("fashion-job"), None, ["--model", "fashion", *SMALL])
