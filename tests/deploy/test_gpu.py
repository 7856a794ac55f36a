"""The GPU deployment, checked without a GPU or a Docker engine: the ``services/*/Dockerfile.gpu`` images
install what their engines load (TensorRT with its ONNX parser, the unversioned ``libnvinfer.so`` Paddle
opens, CUDA/cuDNN of the right major, TorchServe's GPU metrics modules), pin every package, keep engine
caches on a volume, and every GPU overlay (compose, Kubernetes) leaves the engines on ``auto``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.project import (
    BACKENDS,
    REPO,
    Dockerfile,
    constraints,
    dockerfile,
    dockerignore_rules,
    files_under,
    in_build_context,
    parse_dockerfile,
    run_tool,
    settings_under,
    shell_commands,
)

CACHE_ROOT = "/var/cache/triserve"
CACHE_ENV = {"onnx": "TRISERVE_ONNX_TRT_ENGINE_CACHE_DIR", "paddle": "TRISERVE_PADDLE_TRT_CACHE_DIR"}
AUTO_ENV = {
    "onnx": {"TRISERVE_ONNX_PROVIDERS": "auto"},
    "paddle": {"TRISERVE_PADDLE_DEVICE": "auto", "TRISERVE_PADDLE_TENSORRT": "auto"},
}
# What the engines link or dlopen (docs/gpu.md has the sources): onnxruntime-gpu's TensorRT provider
# links libnvinfer.so.10 + libnvonnxparser.so.10 and the CUDA 13 runtime; Paddle dlopens libnvinfer.so.
MUST_LOAD = {
    "onnx": {"libnvinfer.so.10", "libnvonnxparser.so.10", "libcudnn.so.9", "libcudart.so.13"},
    "paddle": {"libnvinfer.so", "libnvonnxparser.so.10"},
}
TENSORRT_WHEEL = {"onnx": ("tensorrt-cu13-libs", "13"), "paddle": ("tensorrt-cu12-libs", "12")}


def gpu_dockerfile(image: str) -> Dockerfile:
    return parse_dockerfile(REPO / "services" / image / "Dockerfile.gpu")


def run_lines(df: Dockerfile) -> list[str]:
    return [ins.args for stage in df.stages for ins in stage.all("RUN")]


def image_env(df: Dockerfile) -> dict[str, str]:
    """ENV of the final image: the runtime stage's, over those of the stages it is built FROM."""
    chain = [df.runtime]
    names = {s.name: s for s in df.stages if s.name}
    while chain[-1].base in names:
        chain.append(names[chain[-1].base])
    env: dict[str, str] = {}
    for stage in reversed(chain):
        env.update(stage.env())
    return env


def pip_installs(df: Dockerfile) -> list[list[str]]:
    """The arguments of every ``pip install`` command in the Dockerfile."""
    return [
        words[words.index("install") + 1 :]
        for line in run_lines(df)
        for words in shell_commands(line)
        if "pip" in words and "install" in words
    ]


def requirement_names(words: list[str]) -> list[str]:
    """Package names a pip command line asks for (not options, local paths or option values)."""
    names, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("-c", "--extra-index-url", "--index-url", "-r"):
            skip = True
            continue
        if word.startswith("-") or word.startswith("./"):
            continue
        names.append(re.split(r"[\[=<>]", word)[0].lower())
    return names


@pytest.mark.parametrize("image", BACKENDS)
def test_gpu_dockerfile_builds_what_it_copies_as_non_root(image: str) -> None:
    df = gpu_dockerfile(image)
    plain = dockerfile(image)
    assert len(df.stages) >= 2
    user = df.runtime.all("USER")[-1].args.split(":")[0]
    assert user.isdigit() and int(user) >= 1000
    rules = dockerignore_rules()
    for src, _dest in df.context_copies():
        sent = [f for f in files_under(REPO / src) if in_build_context(f, rules)]
        assert sent, f"Dockerfile.gpu: COPY {src}: missing or excluded by .dockerignore"
    # Same service, same health check and entry point as the CPU image.
    (check,) = df.runtime.all("HEALTHCHECK")
    (plain_check,) = plain.runtime.all("HEALTHCHECK")
    assert check.args.split("CMD", 1)[1] == plain_check.args.split("CMD", 1)[1]
    assert [e.args for e in df.runtime.all("ENTRYPOINT")] == [e.args for e in plain.runtime.all("ENTRYPOINT")]
    env = image_env(df)
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"  # utility: nvidia-smi, NVML


@pytest.mark.parametrize("image", BACKENDS)
def test_every_package_is_pinned_by_constraints(image: str) -> None:
    pins = constraints()
    installs = pip_installs(gpu_dockerfile(image))
    assert installs
    for words in installs:
        names = requirement_names(words)
        if not names:
            continue
        assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", words
        unpinned = [n for n in names if n not in pins]
        assert not unpinned, f"{image}: not pinned in constraints.txt: {unpinned}"
    # the GPU builds serve the same framework versions as the CPU images
    assert pins["paddlepaddle-gpu"] == pins["paddlepaddle"]


@pytest.mark.parametrize("image", ["onnx", "paddle"])
def test_tensorrt_with_its_onnx_parser_and_unversioned_library(image: str) -> None:
    df = gpu_dockerfile(image)
    wheel, cuda_major = TENSORRT_WHEEL[image]
    names = [n for words in pip_installs(df) for n in requirement_names(words)]
    assert wheel in names, f"{image}: TensorRT libraries ({wheel}) not installed"
    # tensorrt-cu1x-libs on PyPI is a placeholder sdist that downloads the wheel from NVIDIA's index
    (words,) = [w for w in pip_installs(df) if wheel in requirement_names(w)]
    indexes = [words[i + 1] for i, w in enumerate(words) if w == "--extra-index-url"]
    assert "{NVIDIA_INDEX_URL}" in indexes and df.declared_args()["NVIDIA_INDEX_URL"].startswith("https://")
    assert constraints()[wheel].split(".")[0] == "10", "the engines link TensorRT 10 (libnvinfer.so.10)"
    runtime_runs = " ".join(ins.args for ins in df.runtime.all("RUN"))
    assert "gpu_libs.py setup /opt/venv" in runtime_runs, "libraries on the loader path + unversioned names"
    check = re.search(r"gpu_libs\.py check ([^&]+)", runtime_runs)
    assert check, "the build must dlopen what the engine loads"
    assert MUST_LOAD[image] <= set(check.group(1).split())
    if image == "onnx":
        assert "onnxruntime-gpu" in names and "onnxruntime" not in names
        assert cuda_major == "13"  # onnxruntime-gpu 1.31.1 on PyPI is built for CUDA 13.0 (docs/gpu.md)
    else:
        assert "tensorrt-cu12-bindings" in names, "paddle.tensorrt.convert imports the tensorrt package"
        index = df.declared_args()["PADDLE_INDEX_URL"]
        assert index.rstrip("/").endswith(f"cu{cuda_major}6"), index


@pytest.mark.parametrize("image", ["onnx", "paddle"])
def test_engine_cache_is_a_volume_owned_by_the_service_user(image: str) -> None:
    df = gpu_dockerfile(image)
    env = image_env(df)
    assert env[CACHE_ENV[image]].startswith(CACHE_ROOT + "/")
    volumes = [v for ins in df.runtime.all("VOLUME") for v in (ins.exec_form() or [])]
    assert volumes == [CACHE_ROOT]
    runs = " ".join(ins.args for ins in df.runtime.all("RUN"))
    assert f"install -d -o 10001 -g 10001 {CACHE_ROOT}" in runs
    settings = settings_under(image, env)
    for key, value in AUTO_ENV[image].items():
        assert env[key] == value
    if image == "onnx":
        assert settings.providers == ["auto"]  # type: ignore[attr-defined]
    else:
        assert (settings.device, settings.tensorrt) == ("auto", "auto")  # type: ignore[attr-defined]


def test_torchserve_gpu_image_has_cuda_torch_and_gpu_metrics_modules() -> None:
    df = gpu_dockerfile("torchserve")
    names = [n for words in pip_installs(df) for n in requirement_names(words)]
    assert {"torch", "torchserve", "nvgpu", "pynvml"} <= set(names)
    assert not any("--index-url" in words for words in pip_installs(df)), "torch from PyPI = CUDA build"
    # TorchServe's system metrics use pynvml.nvml.NVMLError_NotSupported: the 11.x package has it
    assert constraints()["pynvml"].startswith("11.")
    assert "torch.version.cuda.startswith('13.')" in " ".join(run_lines(df))


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose_gpu() -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not found: apt-get install -y docker-compose")
    result = run_tool([exe, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config"])
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.mark.parametrize("image", BACKENDS)
def test_compose_gpu_override(image: str, compose_gpu: dict[str, Any]) -> None:
    svc = compose_gpu["services"][image]
    assert svc["build"]["dockerfile"] == f"services/{image}/Dockerfile.gpu"
    assert svc["image"] == f"triserve/{image}:gpu"
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert not svc["build"].get("args"), "the GPU images have no variant build args"
    if image in CACHE_ENV:
        env = {**image_env(gpu_dockerfile(image)), **{k: str(v) for k, v in svc["environment"].items()}}
        for key, value in AUTO_ENV[image].items():
            assert env[key] == value
        settings_under(image, env)
        mounts = {v["target"]: v for v in svc["volumes"]} if isinstance(svc["volumes"][0], dict) else {
            v.split(":")[1]: {"source": v.split(":")[0], "type": "volume"} for v in svc["volumes"]
        }
        assert env[CACHE_ENV[image]].startswith(CACHE_ROOT + "/")
        volume = mounts[CACHE_ROOT]
        assert volume["source"] in compose_gpu["volumes"], "a named volume: it outlives the container"
    assert "deploy" not in compose_gpu["services"]["gateway"]


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def k8s_gpu() -> list[dict[str, Any]]:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl not found: apt-get install -y kubernetes-client")
    result = run_tool([exe, "kustomize", str(REPO / "k8s" / "overlays" / "gpu")])
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("image", ["onnx", "paddle"])
def test_k8s_gpu_overlay_leaves_engines_on_auto_with_a_cache(
    image: str, k8s_gpu: list[dict[str, Any]]
) -> None:
    (deployment,) = [o for o in k8s_gpu if o["kind"] == "Deployment" and o["metadata"]["name"] == image]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {**image_env(gpu_dockerfile(image)), **{e["name"]: e["value"] for e in container["env"]}}
    for key, value in AUTO_ENV[image].items():
        assert env[key] == value, f"{key}: the GPU overlay must not force an engine"
    assert "on" not in {env.get("TRISERVE_PADDLE_TENSORRT"), env.get("TRISERVE_PADDLE_DEVICE")}
    settings_under(image, env)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[CACHE_ROOT]], "engine cache survives container restarts in the pod"
    assert Path(env[CACHE_ENV[image]]).is_relative_to(CACHE_ROOT)
    probe = container["startupProbe"]
    assert probe.get("periodSeconds", 10) * probe["failureThreshold"] >= 300, "time for the engine build"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
