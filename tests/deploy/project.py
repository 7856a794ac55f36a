"""What the project's services really serve, read from the project itself, and parsers for the deploy files.

Ports come from each service's settings class instantiated under the environment a container gets
(Dockerfile ``ENV`` + compose/Kubernetes env), TorchServe's from ``services/torchserve/config.properties``
(with the ``TS_*_PORT`` overrides ``services/torchserve/start.sh`` applies). Health and metrics paths come
from the route tables of the apps built by each service's own ``create_app``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import pytest
import yaml

from triserve_common.paths import REPO_ROOT
from triserve_common.settings import ServiceSettings

REPO = REPO_ROOT
SERVICES = ("gateway", "onnx", "paddle", "torchserve")
"""The long-running services (each has a Deployment, a Service, a compose service)."""
BACKENDS = ("onnx", "paddle", "torchserve")
PYTHON_SERVICES = ("gateway", "onnx", "paddle")
IMAGES = (*SERVICES, "trainer")
"""Every image the project builds (services/<name>/Dockerfile)."""

# TorchServe's own API (not ours): health on the inference port, Prometheus text on the metrics port.
TORCHSERVE_HEALTH_PATH = "/ping"
TORCHSERVE_METRICS_PATH = "/metrics"
TORCHSERVE_PORT_KEYS = ("inference", "management", "metrics")
TORCHSERVE_CONFIG = REPO / "services" / "torchserve" / "config.properties"
TORCHSERVE_START = REPO / "services" / "torchserve" / "start.sh"
COMPOSE = REPO / "docker-compose.yml"


# --------------------------------------------------------------------------- settings and ports


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings class a Python service reads its environment with."""
    if service == "onnx":
        from triserve_onnx.settings import OnnxSettings

        return OnnxSettings
    if service == "paddle":
        from triserve_paddle.settings import PaddleSettings

        return PaddleSettings
    if service == "gateway":
        from triserve_gateway.settings import GatewaySettings

        return GatewaySettings
    raise KeyError(service)


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """Exactly ``env`` as the process environment (restored afterwards)."""
    with mock.patch.dict(os.environ, dict(env), clear=True):
        yield


def settings_under(service: str, env: Mapping[str, str]) -> ServiceSettings:
    """The service's settings as the service itself builds them in a container with ``env``."""
    with environ(env):
        return settings_class(service)()


def read_properties(path: Path) -> dict[str, str]:
    """A java ``.properties`` file (``key=value``; ``#``/``!`` comments; the last key wins)."""
    props: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def url_port(url: str) -> int:
    match = re.fullmatch(r"https?://[^/:]+:(\d+)/?", url)
    assert match, f"no explicit port in {url!r}"
    return int(match.group(1))


def torchserve_config_ports() -> dict[str, int]:
    """``inference``/``management``/``metrics`` ports of ``services/torchserve/config.properties``."""
    props = read_properties(TORCHSERVE_CONFIG)
    return {key: url_port(props[f"{key}_address"]) for key in TORCHSERVE_PORT_KEYS}


def torchserve_ports(env: Mapping[str, str]) -> dict[str, int]:
    """TorchServe's ports in a container with ``env``: start.sh's ``TS_<KEY>_PORT`` or the config file's."""
    ports = torchserve_config_ports()
    return {key: int(env.get(f"TS_{key.upper()}_PORT", port)) for key, port in ports.items()}


def served_ports(service: str, env: Mapping[str, str]) -> dict[str, int]:
    """Port name → number the service listens on in a container with ``env``.

    The runtime services serve everything (API, health, metrics) on one port, named ``http`` in the
    manifests; the gateway and TorchServe have three: ``http``/``inference``, ``management``, ``metrics``
    (and the gateway ``grpc``, its gRPC inference port, unless switched off).
    """
    if service == "torchserve":
        return torchserve_ports(env)
    settings = settings_under(service, env)
    if service == "gateway":  # TorchServe's layout: inference, management, metrics
        from triserve_gateway.settings import GatewaySettings

        assert isinstance(settings, GatewaySettings)
        ports = {"http": settings.port, "management": settings.management_port,
                 "metrics": settings.metrics_port}
        return {**ports, "grpc": settings.grpc_port} if settings.grpc_port else ports
    return {"http": settings.port}


@dataclass(frozen=True)
class Endpoints:
    """Where a service answers health and metrics: (port name, path)."""

    live: tuple[str, str]
    ready: tuple[str, str]
    metrics: tuple[str, str]


def endpoints(service: str, routes: Mapping[str, Mapping[str, str]]) -> Endpoints:
    """The service's health/metrics endpoints (Python services: from their app's route table)."""
    if service == "torchserve":
        health = ("inference", TORCHSERVE_HEALTH_PATH)
        return Endpoints(health, health, ("metrics", TORCHSERVE_METRICS_PATH))
    table = routes[service]
    metrics_port = "metrics" if service == "gateway" else "http"  # the gateway: metrics on their own port
    return Endpoints(("http", table["live"]), ("http", table["ready"]), (metrics_port, table["metrics"]))


def get_routes(app: Any) -> dict[str, str]:
    """GET route name → path of a FastAPI app (names are the endpoint functions': live, ready, metrics)."""
    table: dict[str, str] = {}
    for route in app.routes:
        if "GET" in (getattr(route, "methods", None) or set()):
            table.setdefault(route.name, route.path)
    return table


def console_scripts() -> dict[str, tuple[str, str]]:
    """Console script → (distribution folder under services/, ``module:function``) from every pyproject."""
    scripts: dict[str, tuple[str, str]] = {}
    for pyproject in sorted((REPO / "services").glob("*/pyproject.toml")):
        data = tomllib.loads(pyproject.read_text())
        for name, target in data.get("project", {}).get("scripts", {}).items():
            scripts[name] = (pyproject.parent.name, target)
    return scripts


def constraints() -> dict[str, str]:
    """Pinned versions of constraints.txt (lower-cased names)."""
    pins: dict[str, str] = {}
    for raw in (REPO / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def flags(self) -> tuple[dict[str, str], str]:
        """``--flag=value`` options at the start of the arguments, and the rest."""
        flags: dict[str, str] = {}
        rest = self.args
        while (match := re.match(r"--([a-z-]+)(?:=(\S+))?\s+", rest)) is not None:
            flags[match.group(1)] = match.group(2) or ""
            rest = rest[match.end() :]
        return flags, rest

    def exec_form(self, text: str | None = None) -> list[str] | None:
        """The JSON (exec) form's argv, or None for the shell form."""
        text = self.args if text is None else text
        text = text.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
            return [str(v) for v in value]
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ``ENV`` (``KEY=value`` forms; ``$PATH``-style references left as written)."""
        env: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {ins.line}: use ENV KEY=value"
                env[key] = value
        return env

    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        """``COPY`` instructions as (sources, destination, flags)."""
        out = []
        for ins in self.all("COPY"):
            flags, rest = ins.flags()
            argv = ins.exec_form(rest) or shlex.split(rest)
            out.append((argv[:-1], argv[-1], flags))
        return out


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        """The final stage (what ``docker build`` produces)."""
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def declared_args(self) -> dict[str, str]:
        """Every ``ARG`` (global and per stage) with its default."""
        args = dict(self.global_args)
        for stage in self.stages:
            for ins in stage.all("ARG"):
                key, _, default = ins.args.partition("=")
                args[key.strip()] = default.strip().strip('"')
        return args

    def context_copies(self) -> list[tuple[str, str]]:
        """(source, destination) of every ``COPY`` from the build context, in every stage (not ``--from``)."""
        return [
            (src, dest)
            for stage in self.stages
            for sources, dest, flags in stage.copies()
            if "from" not in flags
            for src in sources
        ]

    def container_path_sources(self) -> dict[PurePosixPath, Path]:
        """Destination in the final image → repo path, for every ``COPY`` of the build context into it."""
        mapping: dict[PurePosixPath, Path] = {}
        for sources, dest, flags in self.runtime.copies():
            if "from" in flags:
                continue
            for src in sources:
                target = PurePosixPath(dest)
                if dest.endswith("/"):
                    target = target / PurePosixPath(src).name
                mapping[target] = REPO / src
        return mapping

    def repo_path_of(self, container_path: str) -> Path | None:
        """The repo file/folder that ends up at ``container_path`` in the final image (None: not copied)."""
        wanted = PurePosixPath(container_path)
        for dest, src in self.container_path_sources().items():
            if wanted == dest:
                return src
            if dest in wanted.parents:
                return src / wanted.relative_to(dest)
        return None


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions of a Dockerfile (continuations joined, comments dropped), grouped by stage."""
    logical: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        logical.append((start, " ".join(b for b in buf if b)))
        buf = []
    assert not buf, f"{path}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        ins = Instruction(keyword, args.strip(), number)
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert keyword == "ARG", f"{path}:{number}: only ARG may precede FROM"
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    assert stages, f"{path}: no FROM"
    return Dockerfile(path, global_args, stages)


def dockerfile(image: str) -> Dockerfile:
    return parse_dockerfile(REPO / "services" / image / "Dockerfile")


# --------------------------------------------------------------------------- .dockerignore


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's ``.dockerignore`` pattern (Go filepath.Match + ``**``) as a regex on slash paths."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) for each line of the root ``.dockerignore``, in order."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not negate, _ignore_regex(pattern)))
    return rules


def in_build_context(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends the file ``relpath``: the last rule matching it or a parent folder wins."""
    parts = PurePosixPath(relpath).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = exclude
    return not excluded


def files_under(path: Path) -> list[str]:
    """Repo-relative paths of the files at/under ``path``."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return [p.relative_to(REPO).as_posix() for p in files]


# --------------------------------------------------------------------------- tools


def run_tool(
    argv: list[str], cwd: Path = REPO, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool; ``env`` is added to this process's environment."""
    full_env = {**os.environ, **env} if env else None
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=full_env
    )


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def compose_config(
    *files: Path, profiles: tuple[str, ...] = (), env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``docker-compose config`` output (what compose itself makes of the files), parsed."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not found: apt-get install -y docker-compose (make deps)")
    argv = [exe]
    for f in files:
        argv += ["-f", str(f)]
    for p in profiles:
        argv += ["--profile", p]
    result = run_tool([*argv, "config"], env=env)
    names = [f.name for f in files]
    assert result.returncode == 0, f"docker-compose config rejected {names}:\n{result.stderr}"
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def env_names_read_by(image: str) -> set[str]:
    """Every environment variable the image's process reads as configuration.

    Python services: their settings class's fields under its prefix. TorchServe: start.sh's own ``TS_*``
    names (those it unsets before starting TorchServe).
    The trainer: the ``TRISERVE_*`` names its code reads.
    """
    if image in PYTHON_SERVICES:
        cls = settings_class(image)
        prefix = str(cls.model_config.get("env_prefix", ""))
        return {f"{prefix}{name}".upper() for name in cls.model_fields}
    if image == "torchserve":
        unset = re.search(r"^unset (TS_.+)$", TORCHSERVE_START.read_text(), re.M)
        assert unset, "start.sh no longer unsets its own TS_* names"
        return set(unset.group(1).split())
    if image == "trainer":  # the variables its code (and the shared package's) names
        sources = [f for d in ("trainer", "common") for f in (REPO / "services" / d).rglob("*.py")]
        return {name for f in sources for name in re.findall(r"[\"'](TRISERVE_[A-Z_]+)[\"']", f.read_text())}
    raise KeyError(image)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell ``RUN`` line (split at ``&&``, ``;``, ``|``), words unquoted."""
    lexer = shlex.shlex(script.replace("${", "{"), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]
