"""`docker compose up` for real: the images built here, run as compose runs them, checked end to end
through the ports published on 127.0.0.1 (``make compose-test``). The tests run in file order on one stack."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.compose.load import Load
from tests.compose.stack import BACKENDS, SERVICES, Stack, run
from tests.support.procs import REPO_ROOT
from triserve_cli.sample import pick

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README_CURL = re.compile(r"^(curl -s -T (\d)\.png )http://127\.0\.0\.1:8080(/predictions/mnist)\s", re.M)
HELD_OUT = 100  # t10k images by index, through every backend


def readme_curl_line() -> tuple[str, int]:
    """The README's quickstart curl line (``curl -s -T 0.png http://127.0.0.1:8080/predictions/mnist``)."""
    match = README_CURL.search((REPO_ROOT / "README.md").read_text())
    assert match, "README.md has no `curl -s -T <digit>.png http://127.0.0.1:8080/predictions/mnist` line"
    return match.group(0).strip(), int(match.group(2))


def predict(
    client: httpx.Client, stack: Stack, png: bytes, backend: str | None = None, version: str | None = None
) -> tuple[int, str]:
    headers = {"X-Backend": backend} if backend else {}
    path = "/predictions/mnist" + (f"/{version}" if version else "")
    resp = client.put(f"{stack.gateway_url}{path}", content=png, headers=headers)
    assert resp.status_code == 200, resp.text
    served = resp.headers["x-backend"]
    assert backend is None or served == backend
    return int(resp.text), served


def test_images_carry_no_build_tools_or_caches(stack: Stack, report: dict[str, Any]) -> None:
    sizes = {}
    for service in (*SERVICES, "trainer"):
        image = f"triserve/{service}:cpu"
        sizes[image] = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image], 60).stdout) // 10**6
        # As root, to see everywhere: caches, leftovers of the build stage, apt lists, compilers.
        found = run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c",
                     "ls -d /root/.cache /tmp/* /var/lib/apt/lists/*_Packages /var/cache/apt/archives/*.deb"
                     " /opt/venv/bin/pip* /etc/pip-ca.pem 2>/dev/null; command -v gcc cc c++ make || true"],
                    120).stdout.split()
        assert not found, f"{image} carries {found}"
    report["image_size_mb"] = sizes


@pytest.mark.parametrize("service", SERVICES)
def test_services_run_hardened(stack: Stack, service: str) -> None:
    """Read-only root, only /tmp writable (TorchServe included), non-root, no capabilities."""
    info = stack.inspect(service)
    host = info["HostConfig"]
    config = info["Config"]
    assert isinstance(host, dict) and isinstance(config, dict)
    assert host["ReadonlyRootfs"] is True and set(host["Tmpfs"]) == {"/tmp"}
    assert host["CapDrop"] == ["ALL"] and str(config["User"]).startswith("10001")
    writable = run(["docker", "exec", stack.container(service), "sh", "-c",
                    "for d in / /opt/triserve /opt/triserve/model_store /opt/venv /tmp; do"
                    " touch $d/.w 2>/dev/null && echo $d && rm $d/.w; done"], 60).stdout.split()
    assert writable == ["/tmp"]


def test_readme_curl_line_with_each_backend(stack: Stack, mnist_dir: Path, tmp_path: Path) -> None:
    line, digit = readme_curl_line()
    subprocess.run([sys.executable, "-m", "triserve_cli", "sample", str(digit), "--data-dir", str(mnist_dir),
                    "-o", str(tmp_path / f"{digit}.png")], check=True, timeout=120)
    command = line.replace("http://127.0.0.1:8080", stack.gateway_url)
    for backend in (None, *BACKENDS):
        header = f' -H "X-Backend: {backend}"' if backend else ""
        out = subprocess.run(command + header, shell=True, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, check=True).stdout
        assert out.strip() == str(digit), f"{command}{header} printed {out!r}"


def test_held_out_digits_through_every_backend(stack: Stack, mnist_dir: Path, report: dict[str, Any]) -> None:
    """`triserve sample`'s choice of each digit (all right everywhere), then the first t10k images by index
    (the backends agree on every one, and are as accurate as the model)."""
    typical = [pick(mnist_dir, digit=d) for d in range(10)]
    by_index = [pick(mnist_dir, index=i) for i in range(HELD_OUT)]
    right: dict[str, str] = {}
    answers: dict[str, list[int]] = {}
    with httpx.Client(timeout=30) as client:
        for backend in BACKENDS:
            labels = [predict(client, stack, s.png(), backend)[0] for s in typical]
            assert labels == list(range(10)), f"{backend}: {labels}"
            answers[backend] = [predict(client, stack, s.png(), backend)[0] for s in by_index]
            hits = sum(a == s.label for a, s in zip(answers[backend], by_index, strict=True))
            right[backend] = f"10/10 typical, {hits}/{HELD_OUT} by index"
            assert hits >= 0.97 * HELD_OUT, right[backend]
    assert answers["paddle"] == answers["onnx"] == answers["torchserve"]
    report["digits_right"] = right


def test_prometheus_scrapes_every_target(stack: Stack, report: dict[str, Any]) -> None:
    expected = {*SERVICES, "prometheus"}
    deadline = time.monotonic() + 120
    up: dict[str, str] = {}
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            resp = client.get(f"{stack.prometheus_url}/api/v1/query", params={"query": "up"})
            assert resp.status_code == 200, resp.text
            up = {r["metric"]["job"]: r["value"][1] for r in resp.json()["data"]["result"]}
            if set(up) >= expected and all(up[job] == "1" for job in expected):
                break
            time.sleep(2)
    assert {job: up.get(job) for job in expected} == dict.fromkeys(expected, "1"), up
    report["prometheus_up"] = up


def test_backend_killed_and_restarted_under_load(
    stack: Stack, mnist_dir: Path, report: dict[str, Any]
) -> None:
    """SIGKILL the primary backend (onnx, weight 80) under light load, start it again: no request fails, and
    the gateway sends it traffic again once it is healthy."""
    victim = "onnx"
    png = pick(mnist_dir, digit=7).png()
    with Load(f"{stack.gateway_url}/predictions/mnist", png) as load:
        time.sleep(3)
        run(["docker", "kill", stack.container(victim)], 60)
        time.sleep(3)
        restarted = time.monotonic()
        stack.run("start", victim)
        recovery = stack.wait_healthy([victim], since=restarted, deadline_s=300)[victim]
        deadline = time.monotonic() + 60
        while not load.backends_since(restarted)[victim] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
    outcomes = load.snapshot()
    failures = load.failures()
    report["kill"] = {"victim": victim, "requests": len(outcomes), "failed": len(failures),
                      "healthy_again_s": recovery, "served_by": dict(load.backends_since(0))}
    assert len(outcomes) > 50, "the load never ran"
    assert not failures, failures[:5]
    assert load.backends_since(restarted)[victim] > 0, f"{victim} got no traffic after its restart"


def v2_infer(client: httpx.Client, stack: Stack, body: dict[str, Any], backend: str,
             version: str | None = None) -> dict[str, Any]:
    """POST an OIP v2 JSON request to the gateway, the backend forced."""
    path = "/v2/models/mnist" + (f"/versions/{version}" if version else "") + "/infer"
    resp = client.post(f"{stack.gateway_url}{path}", json=body, headers={"X-Backend": backend})
    assert resp.status_code == 200, f"{backend} {path}: {resp.status_code} {resp.text}"
    assert resp.headers["x-backend"] == backend
    answer: dict[str, Any] = resp.json()
    return answer


def test_trainer_publishes_a_version_the_services_serve_after_restart(
    stack: Stack, mnist_dir: Path, report: dict[str, Any]
) -> None:
    """The trainer profile writes the next version into the model-store volume; after a restart every
    backend serves it (with new weights: its logits differ from the default version's), and the default
    version is what routing.yaml says (its ``default_version``, else the highest)."""
    from triserve_gateway.config import load_routing

    images = [pick(mnist_dir, index=i) for i in range(20)]
    # The README's preprocessed FP32 request: answered with the logits.
    x = (images[0].pixels.astype(np.float32) / 255 - 0.1307) / 0.3081
    tensor_body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                               "data": x.ravel().tolist()}]}
    with httpx.Client(timeout=30) as client:
        before = client.get(f"{stack.gateway_url}/v2/models/mnist").json()["versions"]
        old = {b: v2_infer(client, stack, tensor_body, b) for b in BACKENDS}
        started = time.monotonic()
        trained = stack.run(
            "--profile", "train", "run", "--rm", "trainer", "--store", "/opt/triserve/model_store",
            "--work-dir", "/tmp/trainer", "--no-progress", "--data-dir", "/data/mnist", "--epochs", "1",
            timeout=1800,
        )
        report["trainer_s"] = round(time.monotonic() - started, 1)
        restarted = time.monotonic()
        stack.run("restart", *SERVICES, timeout=600)
        report["restart_health_s"] = stack.wait_healthy(SERVICES, since=restarted, deadline_s=600)
        after = client.get(f"{stack.gateway_url}/v2/models/mnist").json()["versions"]
        new = [v for v in after if v not in before]
        assert len(new) == 1, f"versions before {before}, after {after}\n{trained.stdout[-2000:]}"
        pinned = load_routing().models["mnist"].default_version
        for backend in BACKENDS:
            served = v2_infer(client, stack, tensor_body, backend, new[0])
            assert served["model_version"] == new[0]
            assert served["outputs"] != old[backend]["outputs"], f"{backend}: {new[0]} has the old weights"
            default = v2_infer(client, stack, tensor_body, backend)["model_version"]
            assert default == (pinned or new[0]), f"{backend}: default version {default}"
        answers = {b: [predict(client, stack, s.png(), b, new[0])[0] for s in images] for b in BACKENDS}
        assert answers["onnx"] == answers["paddle"] == answers["torchserve"]
        accuracy = np.mean([a == s.label for a, s in zip(answers["onnx"], images, strict=True)])
        report["trained_version"] = {"version": new[0], "default_version": pinned or new[0],
                                     "accuracy_on_20": float(accuracy)}


def test_down_leaves_nothing(stack: Stack) -> None:
    stack.down()
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
