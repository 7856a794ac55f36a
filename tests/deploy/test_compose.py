"""docker-compose.yml (+ the GPU override) and the Prometheus/Grafana provisioning it mounts, checked
without a Docker engine: Debian's docker-compose accepts the files, and every port, health check and
scrape target is one the services really serve."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.deploy.project import (
    BACKENDS,
    COMPOSE,
    PYTHON_SERVICES,
    REPO,
    SERVICES,
    compose_config,
    dockerfile,
    endpoints,
    served_ports,
    settings_under,
    url_port,
)

COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
COMPOSE_OFFLINE = REPO / "docker-compose.offline.yml"
COMPOSE_TEST = REPO / "tests" / "compose" / "docker-compose.test.yml"
BASE_IMAGE_SCRIPT = REPO / "deploy" / "docker" / "base-image.sh"
PROMETHEUS_DOCKERFILE = REPO / "deploy" / "prometheus" / "Dockerfile"
STORE = "/opt/triserve/model_store"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config(COMPOSE)


@pytest.fixture(scope="module")
def compose_gpu() -> dict[str, Any]:
    return compose_config(COMPOSE, COMPOSE_GPU)


def container_env(service: str, config: dict[str, Any]) -> dict[str, str]:
    """The environment the service's process sees: its image's ENV, then compose's environment."""
    env = dockerfile(service).runtime.env()
    env.update({k: str(v) for k, v in (config["services"][service].get("environment") or {}).items()})
    return env


def mounts_of(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, source) of a service's volumes, short (compose 1.x output) or long syntax."""
    out = []
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            out.append((volume["target"], str(volume.get("source", ""))))
        else:
            source, target = volume.split(":")[:2]
            out.append((target, source))
    return out


def published_ports(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, published port, container port) of a service, long or short syntax ("" = all)."""
    out = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), int(port["published"]), int(port["target"])))
        else:
            *host, published, target = str(port).split("/")[0].split(":")
            out.append((":".join(host), int(published), int(target)))
    return out


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Target → host path of the bind mounts."""
    return {target: Path(source) for target, source in mounts_of(svc) if source.startswith("/")}


def test_compose_files_are_accepted(compose: dict[str, Any], compose_gpu: dict[str, Any]) -> None:
    assert set(SERVICES) | {"prometheus", "grafana"} <= set(compose["services"])
    assert set(compose_gpu["services"]) == set(compose["services"])


def test_only_the_gateway_publishes_a_port(compose: dict[str, Any]) -> None:
    published = {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}
    assert set(published) == {"gateway"}, published
    served = served_ports("gateway", container_env("gateway", compose))
    assert published_ports(compose["services"]["gateway"]) == [
        ("", 8080, served["http"]), ("", 7070, served["grpc"])  # inference: HTTP, gRPC
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_services_build_their_dockerfile_and_check_their_health(
    service: str, compose: dict[str, Any], routes: dict[str, dict[str, str]]
) -> None:
    svc = compose["services"][service]
    assert Path(svc["build"]["context"]).resolve() == REPO
    assert svc["build"]["dockerfile"] == f"services/{service}/Dockerfile"
    df = dockerfile(service)
    (check,) = df.runtime.all("HEALTHCHECK")
    _flags, rest = check.flags()
    image_test = check.exec_form(rest.removeprefix("CMD ").strip())
    # compose's health check is the image's (tests/deploy/test_dockerfiles.py proves that one right).
    assert svc["healthcheck"]["test"] == ["CMD", *(image_test or [])]
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    if service in PYTHON_SERVICES:
        assert svc["healthcheck"]["test"][-1] == endpoints(service, routes).ready[1]


def test_gateway_waits_for_healthy_backends(compose: dict[str, Any]) -> None:
    depends = compose["services"]["gateway"]["depends_on"]
    assert {name: d["condition"] for name, d in depends.items()} == dict.fromkeys(BACKENDS, "service_healthy")
    grafana = compose["services"]["grafana"]["depends_on"]
    assert grafana["prometheus"]["condition"] == "service_healthy"
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["healthcheck"]["test"]


def test_gateway_routes_to_the_ports_the_backends_serve(compose: dict[str, Any]) -> None:
    """The gateway's effective routing (its routing file + compose env, read by its own config code)."""
    from tests.deploy.project import settings_under
    from triserve_gateway.config import apply_overrides, load_routing

    env = container_env("gateway", compose)
    settings = settings_under("gateway", env)
    routing_file = dockerfile("gateway").repo_path_of(str(settings.routing_file))  # type: ignore[attr-defined]
    assert routing_file is not None and routing_file.is_file(), "the routing file is not in the image"
    with_env = {k: v for k, v in env.items() if k != "TRISERVE_GATEWAY_ROUTING_FILE"}
    routing = apply_overrides(load_routing(routing_file), settings_under("gateway", with_env))  # type: ignore[arg-type]
    assert set(routing.backends) == set(BACKENDS)
    for name, backend in routing.backends.items():
        host = re.match(r"https?://([^:/]+)", backend.url)
        assert host and host.group(1) == name, f"backend {name} at {backend.url}: not the compose service"
        ports = served_ports(name, container_env(name, compose))
        role = "inference" if name == "torchserve" else "http"
        assert url_port(backend.url) == ports[role], f"gateway calls {backend.url}, {name} serves {ports}"
        if backend.management_url:
            assert url_port(backend.management_url) == ports["management"]


def test_trainer_is_a_one_shot_job_under_a_profile(compose: dict[str, Any]) -> None:
    from triserve_trainer.cli import build_parser

    config = compose_config(COMPOSE, profiles=("train",))
    trainer = config["services"]["trainer"]
    # Started only with --profile train (`docker compose up` leaves it out); it runs once.
    assert trainer["profiles"] == ["train"] and trainer["restart"] == "no"
    assert [n for n, svc in compose["services"].items() if svc.get("profiles")] == ["trainer"]
    args = build_parser().parse_args(trainer["command"])
    targets = {target for target, _source in mounts_of(trainer)}
    assert str(args.store) in targets, "the model store the trainer writes is a volume"
    assert dockerfile("trainer").runtime.env()["TRISERVE_MNIST_DIR"] in targets


# The GPU override (docker-compose.gpu.yml -> services/*/Dockerfile.gpu): tests/deploy/test_gpu.py.


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_metrics_every_service_serves(
    compose: dict[str, Any], routes: dict[str, dict[str, str]]
) -> None:
    prom = compose["services"]["prometheus"]
    mounts = bind_mounts(prom)
    assert Path(mounts["/etc/prometheus/prometheus.yml"]) == PROMETHEUS
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service in SERVICES:
        job = jobs[service]
        (static,) = job["static_configs"]
        (target,) = static["targets"]
        host, _, port = target.partition(":")
        assert host == service and host in compose["services"]
        port_name, path = endpoints(service, routes).metrics
        assert int(port) == served_ports(service, container_env(service, compose))[port_name]
        assert job.get("metrics_path", "/metrics") == path


# --------------------------------------------------------------------------- Grafana


def exported_metric_names() -> set[str]:
    """Every series name the gateway and the OIP v2 backends export (from their own metric classes)."""
    from triserve_common.dataplane import DataPlaneMetrics
    from triserve_gateway.metrics import GatewayMetrics

    names: set[str] = set()
    for cls in (GatewayMetrics, DataPlaneMetrics):
        registry = CollectorRegistry()
        cls(registry)
        for family in registry.collect():
            names.add(family.name)
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_grafana_provisions_the_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert re.fullmatch(r"http://prometheus:\d+", datasource["url"]) and "prometheus" in compose["services"]
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/triserve.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    dashboard = json.loads((GRAFANA / "dashboards/triserve.json").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]


def test_dashboard_panels_query_metrics_that_exist() -> None:
    dashboard = json.loads((GRAFANA / "dashboards/triserve.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for needed in ("request rate", "p50", "p95", "p99", "error", "batch size", "up", "shadow top-1 agreement",
                   "max |logit diff|", "torchserve's metric names"):
        assert needed in titles, f"no panel about {needed}"
    exported = exported_metric_names()
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    for panel in panels:
        for target in panel["targets"]:
            for metric in re.findall(r"\b(triserve_[a-z_]+|Requests[245]XX|ts_[a-z_]+)", target["expr"]):
                assert metric in exported, f"panel {panel['title']!r}: {metric} is exported by no service"
            for job_regex in re.findall(r'job=~"([^"]+)"', target["expr"]):
                assert set(job_regex.split("|")) <= jobs, job_regex


# --------------------------------------------------------------------------- networks and keys


def test_backends_are_reachable_from_the_gateway_only(compose: dict[str, Any]) -> None:
    """Backends on an internal network that only the gateway and Prometheus join; TorchServe's
    management API bound to its address on a network that only the gateway joins."""
    services = compose["services"]
    joined = {name: set(svc.get("networks") or {}) for name, svc in services.items()}
    assert compose["networks"]["backends"]["internal"] is True
    assert compose["networks"]["torchserve-admin"]["internal"] is True
    assert {n for n, nets in joined.items() if "backends" in nets} == {"gateway", "prometheus", *BACKENDS}
    assert {n for n, nets in joined.items() if "torchserve-admin" in nets} == {"gateway", "torchserve"}
    for backend in BACKENDS:
        assert joined[backend] <= {"backends", "torchserve-admin"}, f"{backend} is on {joined[backend]}"
    (alias,) = services["torchserve"]["networks"]["torchserve-admin"]["aliases"]
    assert container_env("torchserve", compose)["TS_MANAGEMENT_HOST"] == alias
    from triserve_gateway.config import apply_overrides, load_routing

    gateway = settings_under("gateway", container_env("gateway", compose))
    routing = apply_overrides(load_routing(), gateway)  # type: ignore[arg-type]
    assert routing.backends["torchserve"].management_url == f"http://{alias}:8086"
    # the gateway's own management API: on its loopback (docker compose exec), never published
    assert gateway.management_host == "127.0.0.1"  # type: ignore[attr-defined]
    assert gateway.metrics_host == "0.0.0.0"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- model store volume


def test_services_serve_the_store_volume_the_trainer_writes(compose: dict[str, Any]) -> None:
    """One named volume at the store path every service reads (read-only), the trainer's output (rw)."""
    def store_mount(svc: dict[str, Any]) -> tuple[str, bool]:
        """(source, read-only?) of the service's mount at the store path."""
        for volume in svc.get("volumes", []):
            if isinstance(volume, dict) and volume["target"] == STORE:
                return str(volume.get("source")), bool(volume.get("read_only"))
            if isinstance(volume, str) and volume.split(":")[1] == STORE:
                return volume.split(":")[0], volume.endswith(":ro")
        raise AssertionError(f"nothing mounted at {STORE}")

    trainer = compose_config(COMPOSE, profiles=("train",))["services"]["trainer"]
    assert store_mount(trainer) == ("model-store", False) and "model-store" in compose["volumes"]
    for service in SERVICES:
        svc = compose["services"][service]
        assert store_mount(svc) == ("model-store", True), f"{service}: the store volume, read-only"
        env = container_env(service, compose)
        if service == "torchserve":
            assert env["TS_MODEL_STORE"] == STORE  # the whole store: start.sh links every archive
        else:
            assert str(settings_under(service, env).model_store) == STORE  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- offline override


@pytest.fixture(scope="module")
def compose_offline() -> dict[str, Any]:
    return compose_config(COMPOSE, COMPOSE_OFFLINE, profiles=("train",))


def test_offline_override_builds_every_image_from_the_local_base(
    compose: dict[str, Any], compose_offline: dict[str, Any]
) -> None:
    default_tag = re.search(r'tag="\$\{1:-([^}]+)\}"', BASE_IMAGE_SCRIPT.read_text())
    assert default_tag, "deploy/docker/base-image.sh has no default tag"
    from tests.deploy.project import IMAGES

    for image in IMAGES:
        svc = compose_offline["services"][image]
        args = svc["build"]["args"]
        assert set(args) <= set(dockerfile(image).declared_args()), f"{image}: undeclared build args"
        assert args["BASE_IMAGE"] == default_tag.group(1)
        if "TORCH_INDEX_URL" in dockerfile(image).declared_args():
            assert args["TORCH_INDEX_URL"] == "", f"{image}: offline, torch comes from deploy/docker/wheels"
        assert svc["image"] == compose_config(COMPOSE, profiles=("train",))["services"][image]["image"]
    # Same services, same images as the default file: only how they are built differs.
    for name, svc in compose["services"].items():
        if name not in ("prometheus", "grafana"):
            assert compose_offline["services"][name]["image"] == svc["image"]


def test_offline_prometheus_is_built_from_debian_and_checked_like_its_image(
    compose: dict[str, Any], compose_offline: dict[str, Any]
) -> None:
    from tests.deploy.project import parse_dockerfile

    prom = compose_offline["services"]["prometheus"]
    assert Path(prom["build"]["context"]).resolve() == PROMETHEUS_DOCKERFILE.parent
    df = parse_dockerfile(PROMETHEUS_DOCKERFILE)
    assert re.search(r"apt-get install .*\bprometheus\b", " ".join(i.args for i in df.runtime.all("RUN")))
    (check,) = df.runtime.all("HEALTHCHECK")
    _flags, rest = check.flags()
    assert prom["healthcheck"]["test"] == ["CMD", *(check.exec_form(rest.removeprefix("CMD ").strip()) or [])]
    assert "ready" in prom["healthcheck"]["test"][-1]
    # Mounted config, data volume and flags as for the upstream image.
    assert bind_mounts(prom) == bind_mounts(compose["services"]["prometheus"])
    assert prom["command"] == compose["services"]["prometheus"]["command"]
    # Grafana (no Debian package) only with its profile.
    assert compose_offline["services"]["grafana"]["profiles"] == ["grafana"]
    assert not compose["services"]["grafana"].get("profiles")


def test_the_compose_test_publishes_only_on_loopback() -> None:
    """tests/compose reaches the stack only through 127.0.0.1 ports of its choosing."""
    env = {"TRISERVE_GATEWAY_PUBLISH": "127.0.0.1:18123", "TRISERVE_GATEWAY_GRPC_PUBLISH": "127.0.0.1:18125",
           "TRISERVE_TEST_PROMETHEUS_PORT": "18124"}
    config = compose_config(COMPOSE, COMPOSE_OFFLINE, COMPOSE_TEST, env=env)
    published = {(name, *port) for name, svc in config["services"].items() for port in published_ports(svc)}
    assert published == {("gateway", "127.0.0.1", 18123, 8080), ("gateway", "127.0.0.1", 18125, 7070),
                         ("prometheus", "127.0.0.1", 18124, 9090)}
