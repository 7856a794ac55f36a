"""TorchServe's own inference-API Postman collection, its mnist rows, against the gateway.

``pytorch/serve`` ``test/postman/inference_api_test_collection.json`` with the mnist rows of
``inference_data.json``, run the way TorchServe's harness (``ts_scripts/api_utils.py``,
``trigger_inference_tests``) runs it: the server started with no model registered and token
authorization switched off (``--disable-token-auth``), then per data row:

1. *Model Zoo - Register Model*: ``POST {mgmt}/models?url={url}&model_name={model_name}&initial_workers=
   {worker}&synchronous={synchronous}``; the test: ``pm.response.code`` is one of ``[200]``;
2. *Model Zoo - Inference Model*: ``POST {pred}/predictions/{model_name}`` with the file as the body
   (Postman's ``file`` mode, no Content-Type header); the tests: code ``200`` and, ``content-type``
   being ``text/plain``, ``pm.response.to.have.body(expected)`` — here for every digit, not only 0.png;
3. *Model Zoo - Unregister model*: ``DELETE {mgmt}/models/{model_name}``; code one of ``[200, 201, 202]``;
4. *Model Zoo - Model Metrics*: ``GET http://localhost:8082/metrics``; the test: the body matches
   :data:`MODEL_METRICS_PATTERN` (TorchServe's ``Requests2XX`` line, as TorchServe writes it). The
   collection names the port (8082, the metrics port of TorchServe and of the gateway); this test asks
   the gateway's metrics listener on its free port instead (``Gateway.metrics``).

The row's ``url`` is TorchServe's download URL for ``mnist_v2.mar``; the gateway only registers
archives of its model store, so the row registers ``mnist.mar`` (as issue 14 asks).

The collection-derived data below (the row, the metrics pattern) is from pytorch/serve,
Apache License 2.0.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.compat.conftest import Backends, CompatStore, Gateway, start_gateway
from tests.support.mnist import one_per_digit
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration

ROW = {
    "url": "mnist.mar",
    "model_name": "mnist",
    "worker": 1,
    "synchronous": "true",
    "content-type": "text/plain",
}
"""The mnist row of inference_data.json (url: the store's archive instead of a download)."""

MODEL_METRICS_PATTERN = r'.*Requests2XX\{Level="Host",Hostname=".*",\} \d+\.\d+.*'
"""The regular expression of the *Model Metrics* test script (``new RegExp('...')``, its JSON and
JavaScript string escapes undone). Chai's ``to.match`` is ``RegExp.exec``: a match anywhere, ``.``
not crossing a line end, as :func:`re.search` without flags."""
INFERENCES = 10


@pytest.fixture(scope="module")
def gateway(backends: Backends) -> Iterator[Gateway]:
    gw = start_gateway(backends, "gateway-postman", {"TRISERVE_GATEWAY_DISABLE_TOKEN_AUTH": "true"})
    try:
        yield gw
    finally:
        gw.proc.stop()
    assert "token authorization is DISABLED" in gw.proc.log_path.read_text()


def test_inference_collection_mnist_rows(
    gateway: Gateway, backends: Backends, test_store: CompatStore, mnist_dir: Path
) -> None:
    digits = one_per_digit(mnist_dir, read_manifest(test_store.root / "mnist" / "1"))
    with httpx.Client(timeout=240) as postman:  # no Authorization header anywhere, as the harness
        register = postman.post(
            f"{gateway.management}/models",
            params={
                "url": ROW["url"],
                "model_name": ROW["model_name"],
                "initial_workers": ROW["worker"],
                "synchronous": ROW["synchronous"],
            },
        )
        assert register.status_code in [200], register.text
        for png, label in zip(digits.pngs, digits.labels, strict=True):
            # Postman's file body: the raw bytes, the content-type system header disabled
            request = postman.build_request(
                "POST", f"{gateway.inference}/predictions/{ROW['model_name']}", content=png
            )
            assert "content-type" not in request.headers
            infer = postman.send(request)
            assert infer.status_code in [200], infer.text
            assert infer.text == str(int(label))  # pm.response.to.have.body(expected)
        unregister = postman.delete(f"{gateway.management}/models/{ROW['model_name']}")
        assert unregister.status_code in [200, 201, 202], unregister.text
        metrics = postman.get(f"{gateway.metrics}/metrics")  # the collection's http://localhost:8082/metrics
    assert re.search(MODEL_METRICS_PATTERN, metrics.text), metrics.text  # pm.expect(text).to.match(pattern)
    # beyond the collection: the line counts at least the inferences above (all 200)
    (line,) = [x for x in metrics.text.splitlines() if x.startswith("Requests2XX{")]
    assert metrics.status_code == 200 and float(line.rsplit(" ", 1)[1]) >= len(digits.pngs) == INFERENCES
    assert all(
        ("mnist", v) not in held for held in backends.held().values() for v in ("1", test_store.extra_version)
    )
