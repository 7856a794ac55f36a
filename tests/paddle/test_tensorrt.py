"""Paddle-TensorRT conversion plan and its on-disk cache (pure logic; the conversion itself needs a GPU,
so a stand-in converter writes the files ``paddle.tensorrt.convert`` would)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from triserve_common.errors import TriserveError
from triserve_common.manifest import TensorSpec
from triserve_paddle import trt
from triserve_paddle.settings import PaddleSettings

INPUTS = [TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 28, 28])]


def settings(**kw: object) -> PaddleSettings:
    return PaddleSettings(model_store=Path("/nonexistent"), **kw)  # type: ignore[arg-type]


class StandIn:
    """Writes ``<prefix>.json`` (with ``ops`` tensorrt_engine ops) and ``<prefix>.pdiparams``."""

    def __init__(self, ops: int = 1) -> None:
        self.ops = ops
        self.calls: list[tuple[Path, trt.TrtPlan, Path]] = []

    def __call__(self, model: Path, plan: trt.TrtPlan, prefix: Path) -> None:
        self.calls.append((model, plan, prefix))
        ops = ",".join(['{"N": "1.tensorrt_engine"}'] * self.ops)
        prefix.with_suffix(".json").write_text(f'{{"ops": [{ops}]}}')
        prefix.with_suffix(".pdiparams").write_bytes(b"params")


def test_plan_has_the_dynamic_batch_range_and_precision() -> None:
    plan = trt.trt_plan(settings(max_batch_size=64, trt_opt_batch=16, trt_precision="fp16"), INPUTS)
    assert plan.shapes == [([1, 1, 28, 28], [16, 1, 28, 28], [64, 1, 28, 28])]
    assert plan.precision == "fp16" and plan.min_subgraph_size == 3
    # opt is clamped into [min, max]
    assert trt.trt_plan(settings(max_batch_size=8, trt_opt_batch=32), INPUTS).shapes[0][1] == [8, 1, 28, 28]
    with pytest.raises(TriserveError, match="non-batch dimension"):
        trt.trt_plan(settings(), [TensorSpec(name="x", datatype="FP32", shape=[-1, 1, -1, -1])])


def test_cache_key_changes_with_what_invalidates_an_engine() -> None:
    plan = trt.trt_plan(settings(), INPUTS)
    versions = {"paddle": "3.3.1", "tensorrt": "10.5.0", "gpu": "NVIDIA H200"}
    key = trt.cache_key(plan, ["aa", "bb"], versions)
    assert key == trt.cache_key(plan, ["aa", "bb"], dict(versions))
    assert key != trt.cache_key(plan, ["aa", "cc"], versions)
    assert key != trt.cache_key(plan, ["aa", "bb"], {**versions, "gpu": "NVIDIA L4"})
    assert key != trt.cache_key(plan, ["aa", "bb"], {**versions, "tensorrt": "10.16.1"})
    assert key != trt.cache_key(trt.trt_plan(settings(trt_precision="fp16"), INPUTS), ["aa", "bb"], versions)


def test_converted_program_is_reused_after_a_restart(tmp_path: Path) -> None:
    convert = StandIn()
    plan = trt.trt_plan(settings(), INPUTS)
    folder = tmp_path / "cache" / "key"
    first = trt.prepare(tmp_path / "inference.json", plan, folder, convert)
    second = trt.prepare(tmp_path / "inference.json", plan, folder, convert)
    assert first == (folder / "model.json", folder / "model.pdiparams", False)
    assert second == (folder / "model.json", folder / "model.pdiparams", True)
    assert len(convert.calls) == 1 and convert.calls[0][2] == folder / "model"
    assert trt.tensorrt_op_count(first[0]) == 1


def test_incomplete_conversion_is_redone(tmp_path: Path) -> None:
    folder = tmp_path / "key"
    folder.mkdir()
    (folder / "model.json").write_text("half written")  # no COMPLETE marker: a crash mid-way
    convert = StandIn(ops=2)
    plan = trt.trt_plan(settings(), INPUTS)
    model_json, _, cached = trt.prepare(tmp_path / "m.json", plan, folder, convert)
    assert not cached and len(convert.calls) == 1 and trt.tensorrt_op_count(model_json) == 2


def test_a_converter_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TriserveError, match="wrote no"):
        trt.prepare(tmp_path / "m.json", trt.trt_plan(settings(), INPUTS), tmp_path / "k", lambda *a: None)
    assert not (tmp_path / "k" / trt.MARKER).exists()


def test_concurrent_starts_convert_once(tmp_path: Path) -> None:
    convert = StandIn()
    plan = trt.trt_plan(settings(), INPUTS)
    results: list[bool] = []

    def start() -> None:
        results.append(trt.prepare(tmp_path / "m.json", plan, tmp_path / "k", convert)[2])

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(convert.calls) == 1 and sorted(results) == [False, True, True, True]


def test_invalidate_drops_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    trt.prepare(tmp_path / "m.json", trt.trt_plan(settings(), INPUTS), folder, StandIn())
    trt.invalidate(folder)
    assert not folder.exists()
