"""TensorBoard event files beside the curves: written during training, shipped in the version folder."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import Job


def test_event_files_hold_every_epoch(job: Job) -> None:
    tb = job.result.version_dir / "training" / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/test_accuracy", "epoch/lr", "batch/train_loss"} <= tags
    epochs = acc.Scalars("epoch/test_accuracy")
    history = job.result.manifest.metrics
    assert [e.step for e in epochs] == [10, 20]  # 1,200 images / batch 128 = 10 steps per epoch
    assert abs(epochs[-1].value - history.accuracy) < 1e-6
    assert job.result.manifest.training is not None
    assert job.result.manifest.training.tensorboard_dir == "training/tensorboard"
