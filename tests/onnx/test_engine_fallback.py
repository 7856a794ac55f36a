"""Engine fallback of the ONNX service: a provider whose session creation raises gives way to the next.

No GPU here, so the GPU providers are declared available and a session factory injected into the
runtime raises for them the way onnxruntime does without a device; the CPU attempt builds the real
session on the committed model, so the engine reported is checked against what really runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.support.procs import REPO_ROOT
from triserve_common.errors import TriserveError
from triserve_common.rest import build_app
from triserve_onnx import runtime as onnx_runtime
from triserve_onnx.engines import ProviderList
from triserve_onnx.runtime import OnnxRuntime, default_session_factory
from triserve_onnx.settings import OnnxSettings

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
NO_DEVICE = "CUDA failure 100: no CUDA-capable device is detected"


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This onnxruntime claims the GPU providers (as onnxruntime-gpu does, device or not)."""
    monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: list(GPU_BUILD))
    yield


def settings(**kw: object) -> OnnxSettings:
    return OnnxSettings(model_store=REPO_ROOT / "model_store", model_version="1", **kw)  # type: ignore[arg-type]


class Factory:
    """Raises for the providers in ``broken`` (as session creation does without a GPU), else real."""

    def __init__(self, s: OnnxSettings, broken: set[str]) -> None:
        self.real = default_session_factory(s)
        self.broken = broken
        self.attempts: list[ProviderList] = []

    def __call__(self, model: Path, attempt: ProviderList) -> ort.InferenceSession:
        self.attempts.append(attempt)
        if attempt[0][0] in self.broken:
            raise RuntimeError(f"{attempt[0][0]}: {NO_DEVICE}")
        return self.real(model, [(name, opts) for name, opts in attempt if name == "CPUExecutionProvider"])


def test_failing_gpu_providers_fall_back_to_cpu_and_report_it(gpu_build: None) -> None:
    s = settings(device_id=1)
    factory = Factory(s, broken={"TensorrtExecutionProvider", "CUDAExecutionProvider"})
    rt = OnnxRuntime(s, session_factory=factory)
    rt.load()
    assert [[name for name, _ in a] for a in factory.attempts] == [GPU_BUILD, GPU_BUILD[1:], GPU_BUILD[2:]]
    # the CUDA attempt kept its options (onnxruntime's own fallback would have dropped device_id)
    assert factory.attempts[1][0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert rt.engine == "CPUExecutionProvider"
    meta = rt.metadata()
    assert meta["engine"] == "CPUExecutionProvider" and meta["providers"] == ["CPUExecutionProvider"]
    assert meta["requested_providers"] == GPU_BUILD
    assert [f.split(":")[0] for f in meta["fallbacks"]] == GPU_BUILD[:2]
    assert all(NO_DEVICE in f for f in meta["fallbacks"])
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    direct = ort.InferenceSession(str(REPO_ROOT / "model_store/mnist/1/model.onnx"))
    np.testing.assert_allclose(rt.infer({"input": x})["logits"], direct.run(["logits"], {"input": x})[0])


def test_first_working_gpu_provider_is_kept(gpu_build: None) -> None:
    s = settings()
    factory = Factory(s, broken={"TensorrtExecutionProvider"})
    rt = OnnxRuntime(s, session_factory=factory)
    rt.load()
    assert [a[0][0] for a in factory.attempts] == GPU_BUILD[:2]
    # the fake "CUDA" session really runs on CPU: the runtime reports what runs, not what it asked for
    assert rt.engine == "CPUExecutionProvider"
    fallbacks = rt.metadata()["fallbacks"]
    assert fallbacks[0].startswith("TensorrtExecutionProvider: RuntimeError")
    assert fallbacks[1].startswith("CUDAExecutionProvider: onnxruntime did not enable it")


def test_no_provider_at_all_is_a_clear_error(gpu_build: None) -> None:
    s = settings()
    rt = OnnxRuntime(s, session_factory=Factory(s, broken=set(GPU_BUILD)))
    with pytest.raises(TriserveError, match="no execution provider could be initialised") as info:
        rt.load()
    assert all(name in str(info.value) for name in GPU_BUILD)
    assert not rt.ready


async def test_metadata_and_metric_name_the_engine_that_runs(gpu_build: None) -> None:
    s = settings()
    broken = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
    rt = OnnxRuntime(s, session_factory=Factory(s, broken=broken))
    rt.load()
    app = build_app(s, rt, server_name="triserve-onnx", server_version="test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        params = (await client.get("/v2/models/mnist")).json()["parameters"]
        metrics = (await client.get("/metrics")).text
    assert params["engine"] == "CPUExecutionProvider" and len(params["fallbacks"]) == 2
    info = [line for line in metrics.splitlines() if line.startswith("triserve_model_info{")]
    assert len(info) == 1 and 'engine="CPUExecutionProvider"' in info[0], info


def test_default_factory_disables_onnxruntimes_creation_fallback_only() -> None:
    """enable_fallback=0 at creation (ours keeps the options), run-time fallback switched back on."""
    s = settings()
    session = default_session_factory(s)(
        REPO_ROOT / "model_store/mnist/1/model.onnx", [("CPUExecutionProvider", {})]
    )
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session._enable_fallback is True  # onnxruntime keeps the flag privately


def test_engine_cache_folder_is_made_per_model_and_optional(gpu_build: None, tmp_path: Path) -> None:
    s = settings(trt_engine_cache_dir=tmp_path / "cache")
    factory = Factory(s, broken={"TensorrtExecutionProvider"})
    OnnxRuntime(s, session_factory=factory).load()
    trt = factory.attempts[0][0][1]
    (folder,) = (tmp_path / "cache").iterdir()
    assert trt["trt_engine_cache_path"] == str(folder) and folder.name.endswith("-fp32-b1-32-256")
    # a cache path that cannot be a folder: no engine reuse, but the service still starts
    (tmp_path / "file").write_text("")
    s = settings(trt_engine_cache_dir=tmp_path / "file")
    factory = Factory(s, broken={"TensorrtExecutionProvider"})
    rt = OnnxRuntime(s, session_factory=factory)
    rt.load()
    assert "trt_engine_cache_path" not in factory.attempts[0][0][1] and rt.ready
