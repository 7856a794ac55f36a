"""Locust scenario for the triserve gateway: TorchServe-style uploads, KServe v2 requests, forced backends.

Three user classes share the run (weights 3 : 3 : 2); each request's answer is checked (the right digit,
not just a 2xx), and a wrong digit is reported as a failure:

- ``TorchServeUploader``: ``PUT /predictions/mnist`` with a PNG digit, answer ``7``;
- ``KServeV2Client``: ``POST /v2/models/mnist/infer``, binary tensors (3 in 4) or JSON (1 in 4);
- ``ForcedBackendClient``: the v2 binary request with ``X-Backend: onnx|paddle|torchserve`` in turn
  (one Locust request name per backend, so the stats compare them).

Headless, 32 users for one minute against a gateway on :8080 (see loadtest/README.md)::

    locust -f loadtest/locustfile.py --headless -u 32 -r 32 -t 60s --host http://127.0.0.1:8080

Digits: the first 100 t10k images (``$TRISERVE_MNIST_DIR`` or ``../shared/data/mnist``). At start, each
is sent once (forced to ONNX); the few the model itself misclassifies are dropped from the pool, so that a
failure under load is a serving failure, never the model's 0.7 % error rate.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from typing import Any

import httpx
from locust import FastHttpUser, constant, events, task
from locust.env import Environment

from triserve_cli.bench.check import label_of
from triserve_cli.bench.payloads import Digit, load_digits
from triserve_cli.bench.wrk import Answer
from triserve_common import codec

POOL_SIZE = int(os.environ.get("TRISERVE_LOCUST_DIGITS", "100"))
DIGITS: list[Digit] = load_digits(tuple(range(POOL_SIZE)))
BACKENDS = ("onnx", "paddle", "torchserve")


@events.test_start.add_listener
def _keep_digits_the_model_knows(environment: Environment, **_: Any) -> None:
    """Drop from the pool the digits the model itself gets wrong (asked once, through ONNX)."""
    if not environment.host:
        return
    kept = []
    with httpx.Client(base_url=environment.host, timeout=30) as client:
        for digit in DIGITS:
            r = client.post("/v2/models/mnist/infer", content=digit.v2,
                            headers={**digit.v2_headers, "X-Backend": "onnx"})
            r.raise_for_status()
            if label_of("v2", r.content, r.headers.get(codec.HEADER_LENGTH)) == digit.label:
                kept.append(digit)
    dropped = sorted({d.index for d in DIGITS} - {d.index for d in kept})
    logging.info("digit pool: %d kept, misclassified by the model and dropped: %s", len(kept), dropped)
    DIGITS[:] = kept


class _Client(FastHttpUser):
    """Closed loop (no think time) like the benchmark; every answer checked for its digit."""

    abstract = True
    wait_time = constant(0)

    def _send(self, method: str, path: str, name: str, body: bytes, headers: dict[str, str],
              answer: Answer, digit: Digit) -> None:
        with self.client.request(method, path, data=body, headers=headers, name=name,
                                 catch_response=True) as response:
            resp: Any = response
            if not 200 <= resp.status_code < 300:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            got = label_of(answer, resp.content or b"", resp.headers.get(codec.HEADER_LENGTH))
            if got != digit.label:
                resp.failure(f"image {digit.index}: expected {digit.label}, answered {got}")


class TorchServeUploader(_Client):
    """A TorchServe client: raw PNG upload, plain digit back."""

    weight = 3

    @task
    def upload(self) -> None:
        digit = random.choice(DIGITS)
        self._send("PUT", "/predictions/mnist", "PUT /predictions/mnist (png)", digit.png,
                   {"content-type": "image/png"}, "text", digit)


class KServeV2Client(_Client):
    """A KServe v2 client: binary tensor extension mostly, plain JSON sometimes."""

    weight = 3

    @task(3)
    def infer_binary(self) -> None:
        digit = random.choice(DIGITS)
        self._send("POST", "/v2/models/mnist/infer", "POST v2 infer (binary)", digit.v2, digit.v2_headers,
                   "v2", digit)

    @task(1)
    def infer_json(self) -> None:
        digit = random.choice(DIGITS)
        self._send("POST", "/v2/models/mnist/infer", "POST v2 infer (json)", digit.v2_json,
                   {"content-type": "application/json"}, "v2", digit)


class ForcedBackendClient(_Client):
    """v2 binary requests forced to each backend in turn (``X-Backend``)."""

    weight = 2

    def on_start(self) -> None:
        self._backends = itertools.cycle(BACKENDS)

    @task
    def infer_forced(self) -> None:
        digit = random.choice(DIGITS)
        backend = next(self._backends)
        self._send("POST", "/v2/models/mnist/infer", f"POST v2 infer [X-Backend: {backend}]", digit.v2,
                   {**digit.v2_headers, "X-Backend": backend}, "v2", digit)
