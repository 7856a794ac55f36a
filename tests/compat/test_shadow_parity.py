"""Shadow traffic against the REAL backends: a faithful candidate keeps top-1 agreement at 100 %, a
perturbed one moves it; a slow candidate never delays an answer, and its shadows are dropped, not queued.

Every service is its own process on free 127.0.0.1 ports, over copies of the committed model store
made here (the repository's artifacts never change):

- ``onnx`` (the primary: every request goes to it) and ``paddle`` (the faithful candidate: the same
  model on another runtime) serve the copy of ``mnist/1``;
- ``onnx_swapped`` (the perturbed candidate) serves a second copy whose ``model.onnx`` has the
  output rows of classes 3 and 8 swapped in its last layer (manifest re-signed): it calls every 3 an 8
  and every 8 a 3, and agrees on every other digit.

The gateway's own routing file sends ``onnx``'s every request to both candidates (fraction 1). The
expected figures come from the primary's own answers, asked of the ONNX service directly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from tests.support.encode import v2_request, v2_tensor
from tests.support.mnist import Digits, held_out
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import TEST_GATEWAY_WORKERS, free_port_config, service_processes
from triserve_common.manifest import MANIFEST_FILE, file_entry, read_manifest

pytestmark = pytest.mark.integration

SWAPPED = (3, 8)
"""Classes whose output rows the perturbed candidate swaps."""
MAX_CONCURRENT, MAX_QUEUE = 2, 4
IMAGES = 40
SLOW_REQUESTS = 12
MANAGEMENT_KEY = "shadow-test-key"


def swap_classes(onnx_path: Path, a: int, b: int) -> None:
    """Swap the output rows of classes ``a`` and ``b`` in the model's last Gemm (weights and bias)."""
    model = onnx.load(str(onnx_path))
    last = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    by_name = {init.name: init for init in model.graph.initializer}
    for name in last.input[1:3]:  # weight [classes, features] (transB=1), bias [classes]
        arr = numpy_helper.to_array(by_name[name]).copy()
        arr[[a, b]] = arr[[b, a]]
        by_name[name].CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(model, str(onnx_path))


def copy_store(src_version: Path, dst_root: Path) -> Path:
    """``src_version`` (``<store>/mnist/1``) copied as ``<dst_root>/mnist/1``; returns the version folder."""
    dst = dst_root / "mnist" / src_version.name
    shutil.copytree(src_version, dst, ignore=shutil.ignore_patterns("training"))
    return dst


def perturbed_store(src_version: Path, dst_root: Path) -> Path:
    """A store copy whose ONNX model swaps :data:`SWAPPED`, its manifest re-signed."""
    version_dir = copy_store(src_version, dst_root)
    onnx_path = version_dir / "model.onnx"
    swap_classes(onnx_path, *SWAPPED)
    manifest = read_manifest(version_dir)
    manifest.artifacts["onnx"].files = [file_entry(version_dir, onnx_path)]
    (version_dir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return dst_root


@dataclass
class Stack:
    gateway: str
    store: Path
    metrics_urls: list[str]
    onnx: str
    procs: dict[str, ServiceProcess]

    def put(self, body: bytes, request_id: str) -> httpx.Response:
        return httpx.put(f"{self.gateway}/predictions/mnist", content=body,
                         headers={"X-Request-Id": request_id}, timeout=60)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the gateway's metrics: (name, sorted labels) -> value."""
        for url in self.metrics_urls:  # the metrics listener where there is one, else the inference port
            try:
                r = httpx.get(url, timeout=10)
            except httpx.ConnectError:
                continue
            if r.status_code == 200:
                return {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(r.text)
                    for s in family.samples
                }
        raise AssertionError(f"no gateway metrics at {self.metrics_urls}")

    def primary_labels(self, digits: Digits) -> list[int]:
        """What the primary answers, asked of the ONNX service itself (no gateway, no shadow)."""
        r = httpx.post(f"{self.onnx}/v2/models/mnist/infer", json=v2_request(v2_tensor("input", digits.x)),
                       timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        return [int(i) for i in np.asarray(out["data"], np.float32).reshape(out["shape"]).argmax(axis=1)]


def pair(candidate: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": "mnist", "primary": "onnx", "primary_version": "1",
                         "candidate": candidate, "candidate_version": "1"}.items()))


def shadow_value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, candidate: str,
                 **extra: str) -> float:
    labels = tuple(sorted((*pair(candidate), *extra.items())))
    return m.get((name, labels), 0.0)


def outcome(stack: Stack, candidate: str, what: str) -> float:
    return shadow_value(stack.metrics(), "triserve_gateway_shadows_total", candidate, outcome=what)


def pending(stack: Stack, candidate: str) -> float:
    labels = (("candidate", candidate), ("candidate_version", "1"), ("model", "mnist"))
    return stack.metrics().get(("triserve_gateway_shadows_pending", labels), 0.0)


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s:.0f}s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, model_store: Path) -> Digits:
    """The first held-out t10k images (every digit among them, 3s and 8s included)."""
    d = held_out(mnist_dir, read_manifest(model_store / "mnist" / "1"))[list(range(IMAGES))]
    assert set(SWAPPED) <= set(d.labels.tolist()) and len(set(d.labels.tolist())) == 10
    return d


@pytest.fixture(scope="module")
def stack(service_logs: Path, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("shadow")
    store = tmp / "store"
    copy_store(model_store / "mnist" / "1", store)
    swapped_store = perturbed_store(model_store / "mnist" / "1", tmp / "swapped-store")
    config = free_port_config(tmp / "run", store)
    procs = service_processes(config, service_logs)
    onnx_spec = procs["onnx"]
    swapped_port, metrics_port = free_port(), free_port()
    swapped = ServiceProcess(
        "onnx_swapped", onnx_spec.cmd, f"{config.url(swapped_port)}/v2/health/ready", service_logs,
        env={"TRISERVE_ONNX_PORT": str(swapped_port), "TRISERVE_ONNX_MODEL_STORE": str(swapped_store)},
    )
    swapped.env = {**onnx_spec.env, **swapped.env}
    urls = {"onnx": config.url(config.onnx_port), "paddle": config.url(config.paddle_port),
            "onnx_swapped": config.url(swapped_port)}
    routing = {
        "backends": {n: {"protocol": "oip-v2", "url": url, "timeout_s": 120} for n, url in urls.items()},
        "models": {"mnist": {
            "backends": [{"name": "onnx", "weight": 1}],
            "shadow": {
                "candidates": [{"backend": "paddle", "fraction": 1.0},
                               {"backend": "onnx_swapped", "fraction": 1.0}],
                "max_concurrent": MAX_CONCURRENT, "max_queue": MAX_QUEUE, "timeout_s": 120,
            },
        }},
        # one health check at start: the paused candidate below stays 'healthy' for the gateway
        "health": {"interval_s": 3600, "timeout_s": 5},
    }  # fmt: skip
    routing_file = tmp / "routing.yaml"
    routing_file.write_text(yaml.safe_dump(routing))
    gateway_spec = procs["gateway"]
    gateway = ServiceProcess("gateway-shadow", gateway_spec.cmd, gateway_spec.ready_url, service_logs, env={
        "TRISERVE_GATEWAY_HOST": "127.0.0.1",
        "TRISERVE_GATEWAY_PORT": str(config.gateway_port),
        "TRISERVE_GATEWAY_MODEL_STORE": str(store),
        "TRISERVE_GATEWAY_ROUTING_FILE": str(routing_file),
        # the gateway's other listeners, where it has them (management, metrics): free ports too
        "TRISERVE_GATEWAY_MANAGEMENT_PORT": str(free_port()),
        "TRISERVE_GATEWAY_METRICS_PORT": str(metrics_port),
        "TRISERVE_GATEWAY_GRPC_PORT": str(free_port()),
        "TRISERVE_GATEWAY_MANAGEMENT_KEY": MANAGEMENT_KEY,
        # one process: the paused-candidate test counts one shadow lane (each process has its own)
        "TRISERVE_GATEWAY_WORKERS": str(TEST_GATEWAY_WORKERS),
    })  # fmt: skip
    started: list[ServiceProcess] = []
    try:
        for proc in (onnx_spec, procs["paddle"], swapped, gateway):
            proc.start()
            started.append(proc)
        yield Stack(
            config.url(config.gateway_port),
            store,
            [f"{config.url(metrics_port)}/metrics", f"{config.url(config.gateway_port)}/metrics"],
            urls["onnx"],
            {"onnx_swapped": swapped, "gateway": gateway},
        )
    finally:
        for proc in reversed(started):
            if proc.proc is not None and proc.proc.poll() is None:
                os.kill(proc.proc.pid, signal.SIGCONT)
            proc.stop()


def test_faithful_candidate_agrees_fully_and_a_perturbed_one_moves_the_metric(
    stack: Stack, digits: Digits
) -> None:
    candidates = ("paddle", "onnx_swapped")
    names = {"agreed": "triserve_gateway_shadow_agreed_rows_total",
             "compared": "triserve_gateway_shadow_compared_rows_total"}
    m0 = stack.metrics()
    before = {(c, k): shadow_value(m0, name, c) for c in candidates for k, name in names.items()}
    shadows0 = {c: outcome(stack, c, "compared") for c in candidates}
    primary = stack.primary_labels(digits)
    answers = []
    for i, body in enumerate(digits.pngs):
        r = stack.put(body, f"parity-{i}")
        assert r.status_code == 200, r.text
        answers.append(int(r.text))
    # the shadows never change an answer: the gateway answered what the primary answers by itself
    assert answers == primary
    for c in candidates:
        wait_for(lambda c=c: outcome(stack, c, "compared") - shadows0[c] == IMAGES, f"{c} shadows compared")
    m = stack.metrics()
    delta = {(c, k): shadow_value(m, name, c) - before[c, k] for c in candidates for k, name in names.items()}
    max_diff = {c: shadow_value(m, "triserve_gateway_shadow_max_logit_diff", c) for c in candidates}
    tolerance = read_manifest(stack.store / "mnist" / "1").parity.tolerance
    for c in candidates:
        print(f"shadow onnx -> {c}: top-1 agreement {delta[c, 'agreed']:.0f}/{delta[c, 'compared']:.0f}, "
              f"max |logit diff| {max_diff[c]:.3g}")
    # faithful: top-1 agreement 100 %, logits equal to float rounding (the trainer's parity tolerance)
    assert delta["paddle", "agreed"] == delta["paddle", "compared"] == IMAGES
    assert 0 <= max_diff["paddle"] <= tolerance
    # perturbed: every 3 and 8 the primary saw is a disagreement, every other digit agrees
    swapped_rows = [i for i, label in enumerate(primary) if label in SWAPPED]
    assert delta["onnx_swapped", "compared"] == IMAGES
    assert delta["onnx_swapped", "agreed"] == IMAGES - len(swapped_rows) < IMAGES
    assert max_diff["onnx_swapped"] > tolerance
    # every disagreement is logged with its request id, and only those
    log = stack.procs["gateway"].log_path.read_text()
    logged = {int(i) for i in re.findall(r"shadow disagreement: request parity-(\d+) ", log)}
    assert logged == set(swapped_rows)


def test_a_paused_candidate_never_delays_answers_and_its_shadows_are_dropped_not_queued(
    stack: Stack, digits: Digits
) -> None:
    wait_for(lambda: pending(stack, "onnx_swapped") == 0 and pending(stack, "paddle") == 0, "idle lanes")
    before = {(c, o): outcome(stack, c, o) for c in ("paddle", "onnx_swapped")
              for o in ("compared", "failed", "dropped")}
    sample = digits[list(range(SLOW_REQUESTS))]
    primary = stack.primary_labels(sample)
    swapped = stack.procs["onnx_swapped"].proc
    assert swapped is not None
    os.kill(swapped.pid, signal.SIGSTOP)  # the candidate takes connections but answers nothing
    try:
        answers = []
        for i, body in enumerate(sample.pngs):
            r = stack.put(body, f"slow-{i}")
            assert r.status_code == 200 and r.headers["x-backend"] == "onnx", r.text
            answers.append(int(r.text))
        # every answer is complete while the candidate holds its shadows unanswered
        assert answers == primary
        wait_for(lambda: pending(stack, "onnx_swapped") == MAX_CONCURRENT + MAX_QUEUE, "a full lane")
        dropped = SLOW_REQUESTS - MAX_CONCURRENT - MAX_QUEUE
        wait_for(lambda: outcome(stack, "onnx_swapped", "dropped") - before["onnx_swapped", "dropped"]
                 == dropped, f"{dropped} shadows dropped")
        assert outcome(stack, "onnx_swapped", "compared") == before["onnx_swapped", "compared"]
        # the faithful candidate's lane is its own: it kept comparing
        wait_for(lambda: outcome(stack, "paddle", "compared") - before["paddle", "compared"] == SLOW_REQUESTS,
                 "paddle shadows compared meanwhile")
    finally:
        os.kill(swapped.pid, signal.SIGCONT)
    wait_for(lambda: outcome(stack, "onnx_swapped", "compared") - before["onnx_swapped", "compared"]
             == MAX_CONCURRENT + MAX_QUEUE, "held shadows compared once the candidate resumes")
    assert pending(stack, "onnx_swapped") == 0
    assert outcome(stack, "onnx_swapped", "failed") == before["onnx_swapped", "failed"]


def test_torchserve_metric_names_count_the_served_predictions(stack: Stack, digits: Digits) -> None:
    host = socket.gethostname()  # the gateway runs here

    def counts() -> dict[str, float]:
        m = stack.metrics()
        found = {name: m[name, (("Hostname", host), ("Level", "Host"))]
                 for name in ("Requests2XX", "Requests4XX", "Requests5XX")}
        labels = (("hostname", host), ("model_name", "mnist"), ("model_version", "default"))
        found["served"] = m.get(("ts_inference_requests_total", labels), 0.0)
        names = {n for n, _ in m if n.startswith(("ts_", "Requests"))}
        assert names == {"Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",
                         "ts_inference_latency_microseconds", "ts_queue_latency_microseconds"}
        return found

    before = counts()
    for i, body in enumerate(digits.pngs[:5]):
        assert stack.put(body, f"ts-{i}").status_code == 200
    assert stack.put(b"not an image", "ts-bad").status_code == 415
    after = counts()
    assert after["served"] - before["served"] == 5
    assert after["Requests4XX"] - before["Requests4XX"] == 1
    assert after["Requests2XX"] - before["Requests2XX"] >= 5
    assert after["Requests5XX"] == before["Requests5XX"]
