"""Every image's Dockerfile, checked without a Docker engine: what it copies exists (and is in the build
context), what it runs is a real script/module of the project, its ports and health check are the ones the
service really serves, versions are pinned, and it runs as a non-root user."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from tests.deploy.project import (
    IMAGES,
    PYTHON_SERVICES,
    REPO,
    TORCHSERVE_HEALTH_PATH,
    TORCHSERVE_START,
    Dockerfile,
    console_scripts,
    constraints,
    dockerfile,
    dockerignore_rules,
    endpoints,
    files_under,
    in_build_context,
    served_ports,
    settings_class,
    shell_commands,
)

HEALTHCHECK_SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"


def image_env(df: Dockerfile) -> dict[str, str]:
    """The final image's environment as the service sees it (ENV of the runtime stage)."""
    return df.runtime.env()


def pip_local_dirs(df: Dockerfile) -> set[str]:
    """``./services/<x>`` folders pip-installs anywhere in the Dockerfile."""
    found: set[str] = set()
    for stage in df.stages:
        for ins in stage.all("RUN"):
            found.update(m.rstrip("/") for m in re.findall(r"(?<![\w/])\./services/[\w-]+/?", ins.args))
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_multi_stage_and_runs_as_non_root(image: str) -> None:
    df = dockerfile(image)
    assert len(df.stages) >= 2, "build and runtime stages: the runtime copies only the venv"
    users = df.runtime.all("USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), user
    assert user.isdigit() and int(user) >= 1000, "numeric non-root uid (runAsNonRoot can verify it)"
    stages = {s.name for s in df.stages[:-1]}
    for _sources, _dest, flags in df.runtime.copies():
        if "from" in flags:
            assert flags["from"] in stages, f"COPY --from={flags['from']}: no such stage"


@pytest.mark.parametrize("image", IMAGES)
def test_copied_paths_exist_and_are_in_the_build_context(image: str) -> None:
    df = dockerfile(image)
    rules = dockerignore_rules()
    for src, dest in df.context_copies():
        path = REPO / src
        assert path.exists(), f"{df.path.name}: COPY {src} {dest}: {src} does not exist"
        sent = [f for f in files_under(path) if in_build_context(f, rules)]
        assert sent, f"COPY {src}: .dockerignore leaves nothing of it in the build context"
        if path.is_file():
            assert sent == [src], f"COPY {src}: excluded by .dockerignore"
    for local in pip_local_dirs(df):
        assert (REPO / local / "pyproject.toml").is_file(), f"pip install {local}: not a distribution"
        copied = {
            src.rstrip("/")
            for s in df.stages
            for srcs, _, fl in s.copies()
            if "from" not in fl
            for src in srcs
        }
        assert local.removeprefix("./") in copied, f"pip install {local} before copying it"


@pytest.mark.parametrize("image", IMAGES)
def test_versions_are_pinned(image: str) -> None:
    df = dockerfile(image)
    args = df.declared_args()
    for stage in df.stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage.base)
        if base in {s.name for s in df.stages}:
            continue
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"base image {base} is not pinned"
    pins = constraints()
    # Version build args follow constraints.txt (the GPU packages share the CPU packages' versions).
    for arg, package in (
        ("ORT_VERSION", "onnxruntime"),
        ("PADDLE_VERSION", "paddlepaddle"),
        ("TORCH_VERSION", "torch"),
    ):
        if arg in args:
            assert args[arg] == pins[package], f"{arg}={args[arg]}, constraints: {package}=={pins[package]}"
    for stage in df.stages:
        for ins in stage.all("RUN"):
            for words in shell_commands(ins.args):
                if "pip" not in words or "install" not in words:
                    continue
                constrained = "-c" in words and words[words.index("-c") + 1] == "constraints.txt"
                it = iter(words[words.index("install") + 1 :])
                for word in it:
                    if word in ("-c", "--index-url", "--extra-index-url", "-e", "--find-links"):
                        next(it)  # the option's value: a file, an index, a local folder
                        continue
                    if word.startswith(("-", "./", "{", "$")):
                        continue
                    name = re.split(r"[=<>\[]", word)[0].lower()
                    assert "==" in word or (constrained and name in pins), (
                        f"{df.path.name}:{ins.line}: pip install {word} is not pinned (== or constraints.txt)"
                    )


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_names_a_real_script_of_the_project(image: str) -> None:
    df = dockerfile(image)
    (entry,) = df.runtime.all("ENTRYPOINT")
    argv = entry.exec_form()
    assert argv, "ENTRYPOINT in exec form (signals reach the service, not a shell)"
    scripts = console_scripts()
    if argv[0] in scripts:
        distribution, target = scripts[argv[0]]
        assert f"./services/{distribution}" in pip_local_dirs(df), f"{argv[0]}: no services/{distribution}"
        module, _, function = target.partition(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"console script {argv[0]} → {module}: no such module"
        source_text = Path(spec.origin).read_text()
        assert re.search(rf"^def {function}\(", source_text, re.M), f"{target}: no such function"
    else:
        source = df.repo_path_of(argv[0])
        assert source is not None and source.is_file(), f"ENTRYPOINT {argv[0]} is not copied from the repo"
        assert os.access(source, os.X_OK), f"{source} is not executable"
    if image == "trainer":
        from triserve_trainer.cli import build_parser

        (cmd,) = df.runtime.all("CMD")
        args = cmd.exec_form()
        assert args is not None
        parsed = build_parser().parse_args(args)  # raises SystemExit on an unknown option
        assert str(parsed.store) == "/opt/triserve/model_store"
        handler = REPO / "handlers" / "mnist_handler.py"
        assert df.repo_path_of("/opt/triserve/handlers/mnist_handler.py") == handler


@pytest.mark.parametrize("image", IMAGES)
def test_python_modules_named_in_run_commands_exist(image: str) -> None:
    """``python -c "import triserve_x.y"`` build checks name modules of the project that exist."""
    df = dockerfile(image)
    for stage in df.stages:
        for ins in stage.all("RUN"):
            for code in re.findall(r'python -c "([^"]*)"', ins.args):
                for statement in code.split(";"):
                    match = re.match(r"\s*import (.+)", statement)
                    if not match:
                        continue
                    for module in (m.strip() for m in match.group(1).split(",")):
                        if module.startswith("triserve_"):
                            assert importlib.util.find_spec(module) is not None, f"{module} does not exist"


@pytest.mark.parametrize("image", IMAGES)
def test_model_store_is_baked_in(image: str) -> None:
    df = dockerfile(image)
    assert df.repo_path_of("/opt/triserve/model_store") == REPO / "model_store"
    for key, value in image_env(df).items():
        if key.endswith("MODEL_STORE"):
            source = df.repo_path_of(value)
            assert source is not None and source.is_dir(), f"{key}={value} is not in the image"
    if image == "torchserve":
        store = df.repo_path_of(image_env(df)["TS_MODEL_STORE"])
        assert store is not None and any(store.glob("*/*/*.mar")), "start.sh links the store's archives"


@pytest.mark.parametrize("service", PYTHON_SERVICES)
def test_python_service_port_and_healthcheck(service: str, routes: dict[str, dict[str, str]]) -> None:
    df = dockerfile(service)
    env = image_env(df)
    ports = served_ports(service, env)
    port = ports["http"]
    exposed = [port, ports["grpc"]] if service == "gateway" else [port]  # gateway: HTTP + gRPC inference
    assert [int(p) for e in df.runtime.all("EXPOSE") for p in e.args.split()] == exposed
    settings = settings_class(service)
    host_env = f"{settings.model_config['env_prefix']}HOST"
    assert env.get(host_env) == "0.0.0.0", f"{host_env}=0.0.0.0: reachable from outside the container"

    (check,) = df.runtime.all("HEALTHCHECK")
    _flags, rest = check.flags()
    argv = check.exec_form(rest.removeprefix("CMD ").strip())
    assert argv is not None, "HEALTHCHECK CMD in exec form"
    python, script, mode, spec, path = argv
    assert python == "python" and df.repo_path_of(script) == HEALTHCHECK_SCRIPT
    assert mode == "settings" and spec == f"{settings.__module__}:{settings.__qualname__}"
    assert path == endpoints(service, routes).ready[1]


def test_torchserve_ports_and_healthcheck() -> None:
    df = dockerfile("torchserve")
    env = image_env(df)
    ports = served_ports("torchserve", env)
    assert sorted(int(p) for e in df.runtime.all("EXPOSE") for p in e.args.split()) == sorted(ports.values())
    assert env["TS_HOST"] == "0.0.0.0"
    (check,) = df.runtime.all("HEALTHCHECK")
    _flags, rest = check.flags()
    argv = check.exec_form(rest.removeprefix("CMD ").strip())
    assert argv is not None
    python, script, mode, config, key, path = argv
    assert python == "python" and df.repo_path_of(script) == HEALTHCHECK_SCRIPT
    # start.sh renders the config it starts TorchServe with into $TS_RUN_DIR/config.properties.
    assert mode == "properties" and config == f"{env['TS_RUN_DIR']}/config.properties"
    assert '"$run_dir/config.properties"' in TORCHSERVE_START.read_text().replace("config=", "")
    assert key == "inference_address" and path == TORCHSERVE_HEALTH_PATH


def test_start_script_defaults_match_config_properties() -> None:
    """start.sh renders the addresses itself: its default ports must be config.properties' ports."""
    from tests.deploy.project import torchserve_config_ports

    text = TORCHSERVE_START.read_text()
    for key, port in torchserve_config_ports().items():
        host = r"\$\{TS_MANAGEMENT_HOST:-\$host\}" if key == "management" else r"\$\{host\}"
        match = re.search(rf"{key}_address=http://{host}:\$\{{TS_{key.upper()}_PORT:-(\d+)\}}", text)
        assert match, f"start.sh does not render {key}_address from TS_{key.upper()}_PORT"
        assert int(match.group(1)) == port, f"start.sh: {key} {match.group(1)}, config.properties: {port}"


def test_trainer_has_no_healthcheck_port() -> None:
    df = dockerfile("trainer")
    assert [h.args for h in df.runtime.all("HEALTHCHECK")] == ["NONE"]
    assert not df.runtime.all("EXPOSE")


@pytest.mark.parametrize("image", IMAGES)
def test_offline_build_inputs_are_build_arguments_and_stay_out_of_the_runtime(image: str) -> None:
    """The base image is a build argument (the offline path swaps it); torch's source too. The extra CAs and
    local wheels are copied into build stages only, never into the image that runs."""
    df = dockerfile(image)
    args = df.declared_args()
    assert "BASE_IMAGE" in args and df.stages[0].base == "${BASE_IMAGE}"
    build_only = ("deploy/docker/ca", "deploy/docker/wheels")
    for stage in df.stages:
        copied = [s.rstrip("/") for srcs, _d, flags in stage.copies() if "from" not in flags for s in srcs]
        if stage is df.runtime:
            assert not set(copied) & set(build_only), f"{image}: the runtime image copies {copied}"
        elif any(ins.keyword == "RUN" and "pip install" in ins.args for ins in stage.instructions):
            assert "deploy/docker/ca" in copied, f"{image}: pip does not get the extra CAs"
            assert "PIP_CERT" in stage.env()
    runs = " ".join(ins.args for stage in df.stages for ins in stage.all("RUN"))
    if re.search(r"\btorch==", runs):
        assert "TORCH_INDEX_URL" in args and "cpu" in args["TORCH_INDEX_URL"], "CPU torch by default"
        sources = {src for stage in df.stages for srcs, _d, _f in stage.copies() for src in srcs}
        assert "deploy/docker/wheels/" in sources, "no local wheel folder for the offline path"


def test_routes_have_health_and_metrics(routes: dict[str, dict[str, str]]) -> None:
    """The names the deploy tests look up exist in every Python service's app."""
    for service, table in routes.items():
        assert {"live", "ready", "metrics"} <= table.keys(), (service, table)
