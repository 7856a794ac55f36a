"""Conformance of the gateway's management API (port 8081) with TorchServe 0.12's management API.

Every call TorchServe documents — register, list (paginated), describe, scale, set-default,
unregister — against the real gateway in front of the real backends, checked against TorchServe's
answers: status codes, JSON shapes and, for errors, ``{"code", "type", "message"}`` word for word
(the messages are TorchServe 0.12's own, recorded from a real TorchServe). Where an error does not
depend on what is registered, the same call is also made on the TorchServe backend's own management
API and both answers must agree. Plus: the register → infer → scale → set-default → unregister
cycle for every model version of the store, what the backends hold after each step, the v2
repository extension on the management port, and the management key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat.conftest import BACKENDS, Backends, CompatStore, Gateway, start_gateway
from tests.support.mnist import Digits, one_per_digit
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration

KEY = "conformance-key-0123456789"

DESCRIBE_KEYS = {
    "modelName",
    "modelVersion",
    "modelUrl",
    "runtime",
    "minWorkers",
    "maxWorkers",
    "batchSize",
    "maxBatchDelay",
    "responseTimeout",
    "startupTimeout",
    "maxRetryTimeoutInSec",
    "clientTimeoutInMills",
    "parallelType",
    "parallelLevel",
    "deviceType",
    "continuousBatching",
    "useJobTicket",
    "useVenv",
    "stateful",
    "sequenceMaxIdleMSec",
    "sequenceTimeoutMSec",
    "maxNumSequence",
    "maxSequenceJobQueueSize",
    "loadedAtStartup",
    "workers",
    "jobQueueStatus",
}
"""The fields of a TorchServe 0.12 describe entry (the gateway adds one more: ``triserve``)."""
WORKER_KEYS = {"id", "startTime", "status", "memoryUsage", "pid", "gpu", "gpuUsage"}
NOT_FOUND = "Requested resource is not found, please refer to API document."
NOT_ALLOWED = "Requested method is not allowed, please refer to API document."


@pytest.fixture(scope="module")
def gateway(backends: Backends) -> Iterator[Gateway]:
    gw = start_gateway(backends, "gateway-conformance", {"TRISERVE_GATEWAY_MANAGEMENT_KEY": KEY})
    try:
        yield gw
        for name in list_names(gw):  # leave the shared backends as found (unload: default version too)
            gw.mgmt("POST", f"/v2/repository/models/{name}/unload")
    finally:
        gw.proc.stop()
    assert KEY not in gw.proc.log_path.read_text(), "the management key appeared in the gateway's log"


@pytest.fixture(scope="module")
def digits(mnist_dir: Path, test_store: CompatStore) -> Digits:
    return one_per_digit(mnist_dir, read_manifest(test_store.root / "mnist" / "1"))


def list_names(gw: Gateway) -> list[str]:
    return [m["modelName"] for m in gw.mgmt("GET", "/models").json()["models"]]


def ts_error(resp: httpx.Response, status: int, error_type: str, message: str) -> None:
    """``resp`` is TorchServe's error answer."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"code": status, "type": error_type, "message": message}


def ts_status(resp: httpx.Response, status: int, message: str) -> None:
    """``resp`` is TorchServe's ``{"status": ...}`` answer."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.json() == {"status": message}


def register(gw: Gateway, url: str, **params: Any) -> httpx.Response:
    return gw.mgmt("POST", "/models", params={"url": url, **params})


# ------------------------------------------------------------------ the management key


def test_management_requires_the_key_and_inference_and_metrics_stay_open(gateway: Gateway) -> None:
    message = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": "Basic x"},
    ):
        resp = httpx.get(f"{gateway.management}/models", headers=headers)
        ts_error(resp, 401, "InvalidKeyException", message)
        assert resp.headers["www-authenticate"].startswith("Bearer")
    resp = httpx.post(f"{gateway.management}/v2/repository/index")
    assert resp.status_code == 401 and resp.json() == {"error": message}
    assert gateway.mgmt("GET", "/models").status_code == 200
    assert httpx.get(f"{gateway.inference}/ping").status_code == 200  # inference is open by default
    metrics = httpx.get(f"{gateway.metrics}/metrics")
    assert metrics.status_code == 200 and KEY not in metrics.text
    assert httpx.get(f"{gateway.inference}/models").status_code == 404  # no management on the inference port


# ------------------------------------------------------------------ errors, same as TorchServe's

TORCHSERVE_ERRORS: list[tuple[str, str, dict[str, Any], int, str, str]] = [
    ("POST", "/models", {}, 400, "BadRequestException", "Parameter url is required."),
    ("POST", "/models", {"url": "nope.mar"}, 404, "ModelNotFoundException", "Model not found at: nope.mar"),
    (
        "POST",
        "/models",
        {"url": "https://example.com/x.mar"},
        404,
        "ModelNotFoundException",
        "Given URL https://example.com/x.mar does not match any allowed URL(s)",
    ),
    (
        "POST",
        "/models",
        {"url": "../x.mar"},
        404,
        "ModelNotFoundException",
        "Relative path is not allowed in url: ../x.mar",
    ),
    (
        "POST",
        "/models",
        {"url": "/tmp/x.mar"},
        404,
        "ModelNotFoundException",
        "Model not found at: /tmp/x.mar",
    ),
    ("GET", "/models/nope", {}, 404, "ModelNotFoundException", "Model not found: nope"),
    ("GET", "/models/nope/all", {}, 404, "ModelNotFoundException", "Model not found: nope"),
    ("PUT", "/models/nope", {"min_worker": 1}, 404, "ModelNotFoundException", "Model not found: nope"),
    ("PUT", "/models/nope/1/set-default", {}, 404, "ModelNotFoundException", "Model not found: nope"),
    ("DELETE", "/models/nope", {}, 404, "ModelNotFoundException", "Model not found: nope"),
    ("PATCH", "/models", {}, 405, "MethodNotAllowedException", NOT_ALLOWED),
    ("GET", "/nope", {}, 404, "ResourceNotFoundException", NOT_FOUND),
]
"""Errors that do not depend on what is registered: (method, path, query, status, type, message)."""


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "error_type", "message"),
    TORCHSERVE_ERRORS,
    ids=[f"{m} {p} {q}" for m, p, q, *_ in TORCHSERVE_ERRORS],
)
def test_errors_are_torchserves(
    gateway: Gateway,
    backends: Backends,
    method: str,
    path: str,
    params: dict[str, Any],
    status: int,
    error_type: str,
    message: str,
) -> None:
    ours = gateway.mgmt(method, path, params=params)
    ts_error(ours, status, error_type, message)
    theirs = httpx.request(method, backends.ts_management + path, params=params, timeout=60)
    assert (theirs.status_code, theirs.json()) == (ours.status_code, ours.json())


# ------------------------------------------------------------------ the whole cycle, every version


def check_describe(entries: Any, name: str, versions: list[str]) -> list[dict[str, Any]]:
    assert isinstance(entries, list) and [e["modelVersion"] for e in entries] == versions
    for entry in entries:
        assert set(entry) >= DESCRIBE_KEYS and set(entry) - DESCRIBE_KEYS == {"triserve"}
        assert entry["modelName"] == name and entry["runtime"] == "python"
        assert entry["workers"] and all(set(w) == WORKER_KEYS for w in entry["workers"])
        assert set(entry["jobQueueStatus"]) == {"remainingCapacity", "pendingRequests"}
    return list(entries)


def infer_all(gw: Gateway, name: str, version: str, digits: Digits, labels: list[str]) -> None:
    """Each digit's image through every backend holding the version: the right class (mnist) or a label."""
    held = {
        b["name"]
        for b in gw.mgmt("GET", f"/models/{name}/{version}").json()[0]["triserve"]["backends"]
        if b["held"]
    }
    assert held, f"no backend holds {name} {version}"
    for backend in sorted(held):
        for png, label in zip(digits.pngs, digits.labels, strict=True):
            r = httpx.put(
                f"{gw.inference}/predictions/{name}/{version}",
                content=png,
                headers={"X-Backend": backend},
                timeout=60,
            )
            assert r.status_code == 200, (backend, r.text)
            assert r.headers["x-model-version"] == version and r.headers["x-backend"] == backend
            if name in ("mnist", "digits"):
                assert r.text == str(int(label)), (backend, name, version, r.text)
            else:
                assert r.text.strip('"') in labels


def test_register_infer_scale_default_unregister_every_store_version(
    gateway: Gateway, backends: Backends, test_store: CompatStore, digits: Digits
) -> None:
    for name, version in test_store.versions():
        manifest = read_manifest(test_store.root / name / version)
        can = {
            b
            for b, kind in (("onnx", "onnx"), ("paddle", "paddle"), ("torchserve", "torchserve"))
            if kind in manifest.artifacts
        }
        ts_status(
            register(gateway, f"{name}/{version}", model_name=name, initial_workers=1, synchronous="true"),
            200,
            f'Model "{name}" Version: {version} registered with 1 initial workers',
        )
        assert {b for b, held in backends.held().items() if (name, version) in held} == can
        ts_error(
            register(gateway, f"{name}/{version}"),
            409,
            "ConflictStatusException",
            f"Model version {version} is already registered for model {name}",
        )
        (entry,) = check_describe(gateway.mgmt("GET", f"/models/{name}").json(), name, [version])
        assert entry["minWorkers"] == entry["maxWorkers"] == 1 and entry["modelUrl"] == f"{name}/{version}"
        assert entry["loadedAtStartup"] is False and len(entry["workers"]) == len(can)
        infer_all(gateway, name, version, digits, manifest.labels)

        ts_status(
            gateway.mgmt("PUT", f"/models/{name}", params={"min_worker": 2, "synchronous": "true"}),
            200,
            f"Workers scaled to 2 for model: {name}",
        )
        (entry,) = gateway.mgmt("GET", f"/models/{name}/{version}").json()
        assert entry["minWorkers"] == entry["maxWorkers"] == 2 and len(entry["workers"]) == 2 * len(can)
        ts_status(
            gateway.mgmt(
                "PUT",
                f"/models/{name}/{version}",
                params={"min_worker": 1, "max_worker": 1, "synchronous": "true"},
            ),
            200,
            f"Workers scaled to 1 for model: {name}, version: {version}",
        )
        ts_status(
            gateway.mgmt("PUT", f"/models/{name}/{version}/set-default"),
            200,
            f'Default version successfully updated for model "{name}" to "{version}"',
        )
        infer_all(gateway, name, version, digits, manifest.labels)

        ts_status(gateway.mgmt("DELETE", f"/models/{name}"), 200, f'Model "{name}" unregistered')
        assert all((name, version) not in held for held in backends.held().values())
        ts_error(
            gateway.mgmt("GET", f"/models/{name}"), 404, "ModelNotFoundException", f"Model not found: {name}"
        )
        r = httpx.put(f"{gateway.inference}/predictions/{name}", content=digits.pngs[0], timeout=30)
        assert r.status_code == 404


def test_versions_default_and_their_errors(gateway: Gateway, test_store: CompatStore, digits: Digits) -> None:
    v2 = test_store.extra_version
    ts_status(register(gateway, "mnist/1"), 200, 'Model "mnist" Version: 1 registered with 1 initial workers')
    ts_status(
        register(gateway, f"mnist.v{v2}.mar", model_name="mnist"),
        200,
        f'Model "mnist" Version: {v2} registered with 1 initial workers',
    )
    check_describe(gateway.mgmt("GET", "/models/mnist/all").json(), "mnist", ["1", v2])
    # the first version registered stays the default, as in TorchServe
    assert gateway.mgmt("GET", "/models/mnist").json()[0]["modelVersion"] == "1"
    r = httpx.put(f"{gateway.inference}/predictions/mnist", content=digits.pngs[3], timeout=30)
    assert (
        r.status_code == 200 and r.headers["x-model-version"] == "1" and r.text == str(int(digits.labels[3]))
    )

    ts_error(
        gateway.mgmt("GET", "/models/mnist/9"),
        404,
        "ModelVersionNotFoundException",
        "Model version: 9 does not exist for model: mnist",
    )
    ts_error(
        gateway.mgmt("PUT", "/models/mnist/9", params={"min_worker": 1}),
        404,
        "ModelVersionNotFoundException",
        "Model version: 9 does not exist for model: mnist",
    )
    ts_error(
        gateway.mgmt("PUT", "/models/mnist", params={"min_worker": 3, "max_worker": 1}),
        400,
        "BadRequestException",
        "max_worker cannot be less than min_worker.",
    )
    ts_error(
        gateway.mgmt("PUT", "/models/mnist/9/set-default"),
        404,
        "ModelVersionNotFoundException",
        "Model version 9 does not exist for model mnist",
    )
    ts_error(
        gateway.mgmt("DELETE", "/models/mnist/9"),
        404,
        "ModelVersionNotFoundException",
        "Model version: 9 does not exist for model: mnist",
    )
    ts_error(gateway.mgmt("POST", "/models/mnist"), 405, "MethodNotAllowedException", NOT_ALLOWED)
    ts_status(
        gateway.mgmt("PUT", "/models/mnist", params={"min_worker": 1}), 202, "Processing worker updates..."
    )

    ts_status(
        gateway.mgmt("PUT", f"/models/mnist/{v2}/set-default"),
        200,
        f'Default version successfully updated for model "mnist" to "{v2}"',
    )
    r = httpx.put(f"{gateway.inference}/predictions/mnist", content=digits.pngs[3], timeout=30)
    assert r.headers["x-model-version"] == v2
    ts_error(
        gateway.mgmt("DELETE", f"/models/mnist/{v2}"),
        403,
        "InvalidModelVersionException",
        "Cannot remove default version for model mnist",
    )
    ts_status(gateway.mgmt("DELETE", "/models/mnist/1"), 200, 'Model "mnist" unregistered')
    r = httpx.put(f"{gateway.inference}/predictions/mnist/1", content=digits.pngs[3], timeout=30)
    assert r.status_code == 404
    ts_status(gateway.mgmt("DELETE", "/models/mnist"), 200, 'Model "mnist" unregistered')
    ts_error(gateway.mgmt("DELETE", "/models/mnist"), 404, "ModelNotFoundException", "Model not found: mnist")


def test_list_is_paginated_as_torchserve(gateway: Gateway, test_store: CompatStore) -> None:
    assert gateway.mgmt("GET", "/models").json() == {"models": []}
    for url in ("digits.mar", "mnist.mar"):
        assert register(gateway, url, initial_workers=1).status_code == 200
    digits_url = {"modelName": "digits", "modelUrl": "digits.mar"}
    mnist_url = {"modelName": "mnist", "modelUrl": "mnist.mar"}
    assert gateway.mgmt("GET", "/models").json() == {"models": [digits_url, mnist_url]}
    pages = [
        ({"limit": 1}, {"nextPageToken": "1", "models": [digits_url]}),
        ({"limit": 1, "next_page_token": 1}, {"nextPageToken": "2", "models": [mnist_url]}),
        ({"limit": 5}, {"models": [digits_url, mnist_url]}),
        ({"limit": 0}, {"nextPageToken": "0", "models": []}),
        ({"limit": -3}, {"models": [digits_url, mnist_url]}),
        ({"next_page_token": 7}, {"models": []}),
    ]
    for params, expected in pages:
        resp = gateway.mgmt("GET", "/models", params=params)
        assert resp.status_code == 200 and resp.json() == expected, params
    ts_error(
        gateway.mgmt("GET", "/models", params={"limit": "abc"}),
        400,
        "BadRequestException",
        "Invalid value for parameter limit: 'abc' is not an integer",
    )
    for name in ("digits", "mnist"):
        assert gateway.mgmt("DELETE", f"/models/{name}").status_code == 200


def test_register_refuses_an_alias_and_a_model_no_backend_can_run(gateway: Gateway) -> None:
    ts_error(
        register(gateway, "mnist.mar", model_name="other"),
        400,
        "BadRequestException",
        "model_name 'other' differs from the model 'mnist' that url 'mnist.mar' names: "
        "the gateway serves the store's models under their own names",
    )
    ts_error(
        register(gateway, "mnist.mar", initial_workers="two"),
        400,
        "BadRequestException",
        "Invalid value for parameter initial_workers: 'two' is not an integer",
    )
    assert gateway.mgmt("GET", "/models").json() == {"models": []}


# ------------------------------------------------------------------ v2 repository extension


def test_v2_repository_on_the_management_port(
    gateway: Gateway, backends: Backends, test_store: CompatStore
) -> None:
    index = gateway.mgmt("POST", "/v2/repository/index").json()
    assert {(r["name"], r["version"]) for r in index} == set(test_store.versions())
    assert all(r["state"] == "UNAVAILABLE" for r in index)
    resp = gateway.mgmt(
        "POST", "/v2/repository/models/digits/load", json={"parameters": {"instance_count": 2}}
    )
    assert resp.status_code == 200, resp.text
    assert gateway.mgmt("POST", "/v2/repository/index", json={"ready": True}).json() == [
        {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    ]
    assert all(("digits", "1") in held for held in backends.held().values())
    (entry,) = gateway.mgmt("GET", "/models/digits").json()
    assert entry["minWorkers"] == 2 and len(entry["workers"]) == 2 * len(BACKENDS)
    for path, body, status, fragment in (
        ("/v2/repository/models/nope/load", {}, 404, "nope"),
        ("/v2/repository/models/digits/load", {"parameters": {"version": "7"}}, 404, "version '7'"),
        ("/v2/repository/models/digits/load", {"parameters": {"config": "{}"}}, 400, "config"),
        ("/v2/repository/models/mnist/unload", {}, 404, "not loaded"),
    ):
        resp = gateway.mgmt("POST", path, json=body)
        assert resp.status_code == status and fragment in resp.json()["error"], (path, resp.text)
    assert gateway.mgmt("POST", "/v2/repository/models/digits/unload").status_code == 200
    assert all(("digits", "1") not in held for held in backends.held().values())
    assert gateway.mgmt("POST", "/v2/repository/index", json={"ready": True}).json() == []
