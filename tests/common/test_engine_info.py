"""``triserve_model_info{engine}`` follows the engine the runtime reports, also after a run-time fallback."""

from __future__ import annotations

import httpx
import numpy as np

from tests.common.runtime_fakes import FakeRuntime
from triserve_common.rest import build_app
from triserve_common.settings import ServiceSettings


class FallingBackRuntime(FakeRuntime):
    """Reports a GPU engine until its first batch, then the CPU engine it fell back to."""

    def __init__(self) -> None:
        super().__init__(max_batch_size=4)
        self.current = "TensorrtExecutionProvider"

    @property
    def engine(self) -> str:
        return self.current

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.current = "CPUExecutionProvider"
        return super().infer(inputs)


def info_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("triserve_model_info{")]


async def test_engine_label_is_replaced_after_a_fallback() -> None:
    rt = FallingBackRuntime()
    rt.load()
    app = build_app(ServiceSettings(), rt, server_name="test", server_version="0")
    body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        before = info_lines((await client.get("/metrics")).text)
        assert (await client.post("/v2/models/mnist/infer", json=body)).status_code == 200
        after = info_lines((await client.get("/metrics")).text)
        engine = (await client.get("/v2/models/mnist")).json()["parameters"]["engine"]
    assert len(before) == 1 and 'engine="TensorrtExecutionProvider"' in before[0]
    assert len(after) == 1 and 'engine="CPUExecutionProvider"' in after[0], after
    assert engine == "CPUExecutionProvider"
