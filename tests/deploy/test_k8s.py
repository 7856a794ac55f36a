"""k8s/: every overlay renders with ``kubectl kustomize`` (offline), every rendered object validates against
the Kubernetes schemas (kubernetes-validate, offline, strict) — ServiceMonitor, a CRD, against the schema
shipped in tests/deploy/schemas — and every probe, Service port, scrape endpoint and gateway route points at
what the services really serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.project import (
    BACKENDS,
    COMPOSE,
    IMAGES,
    REPO,
    SERVICES,
    compose_config,
    dockerfile,
    endpoints,
    env_names_read_by,
    load_yaml_docs,
    matches,
    run_tool,
    served_ports,
    settings_under,
    url_port,
)

OVERLAYS = ("cpu", "gpu")
NAMESPACE = "triserve"
# Oldest and newest Kubernetes versions the manifests must be valid for (kubernetes-validate ships both).
K8S_VERSIONS = ("1.30.0", "1.37.0")
SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "servicemonitor-monitoring-v1.json"}

Obj = dict[str, Any]


def render(overlay: str) -> list[Obj]:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl not found: apt-get install -y kubernetes-client (Debian) or any kubectl >= 1.20")
    result = run_tool([exe, "kustomize", str(REPO / "k8s" / "overlays" / overlay)])
    assert result.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{result.stderr}"
    return load_yaml_docs(result.stdout)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    overlay: str = request.param
    return overlay, render(overlay)


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def main_container(obj: Obj) -> Obj:
    containers: list[Obj] = pod_spec(obj)["containers"]
    (container,) = containers
    return container


def container_env(service: str, container: Obj) -> dict[str, str]:
    """Environment of the service's process: its image's ENV, then the manifest's env."""
    env = dockerfile(service).runtime.env()
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})  # not Secrets
    return env


def container_ports(container: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


# --------------------------------------------------------------------------- render + schemas


def test_overlays_render_every_object(rendered: tuple[str, list[Obj]]) -> None:
    _overlay, objs = rendered
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for service in SERVICES:
        for kind in (
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
        ):
            assert (kind, service) in kinds, f"{kind}/{service} missing"
    assert (
        ("Namespace", NAMESPACE) in kinds and ("Ingress", "gateway") in kinds and ("Job", "trainer") in kinds
    )
    assert find(objs, "NetworkPolicy") and find(objs, "ConfigMap")
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[Obj]], version: str
) -> None:
    _overlay, objs = rendered
    for obj in objs:
        crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if crd is not None:
            jsonschema.Draft202012Validator(json.loads(crd.read_text())).validate(obj)
            continue
        # strict: unknown fields are errors; SchemaNotFoundError (an unknown kind) fails the test too.
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_servicemonitor_schema_rejects_what_it_should() -> None:
    schema = json.loads(CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")].read_text())
    bad = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "5s"}]},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# --------------------------------------------------------------------------- workloads


@pytest.mark.parametrize("service", SERVICES)
def test_probes_and_ports_are_what_the_service_serves(
    rendered: tuple[str, list[Obj]], service: str, routes: dict[str, dict[str, str]]
) -> None:
    _overlay, objs = rendered
    container = main_container(one(objs, "Deployment", service))
    ports = container_ports(container)
    assert ports == served_ports(service, container_env(service, container))
    expected = endpoints(service, routes)
    for probe, (port_name, path) in (
        ("readinessProbe", expected.ready),
        ("livenessProbe", expected.live),
        ("startupProbe", expected.live),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{service} {probe} path {get['path']}, the service serves {path}"
        assert get["port"] == port_name and port_name in ports, f"{service} {probe} port {get['port']}"


@pytest.mark.parametrize("service", SERVICES)
def test_workloads_are_hardened_and_bounded(rendered: tuple[str, list[Obj]], service: str) -> None:
    _overlay, objs = rendered
    deployment = one(objs, "Deployment", service)
    pod = pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = pod["securityContext"]["runAsUser"]
    assert str(uid) == dockerfile(service).runtime.all("USER")[-1].args.split(":")[0], "the image's user"
    container = main_container(deployment)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, "writable /tmp under a read-only root"
    for key in ("cpu", "memory"):
        assert key in container["resources"]["requests"] and key in container["resources"]["limits"]
    assert container["image"].split(":")[0] == f"triserve/{service}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_target_the_ports_the_pods_serve(rendered: tuple[str, list[Obj]], service: str) -> None:
    _overlay, objs = rendered
    svc = one(objs, "Service", service)
    deployment = one(objs, "Deployment", service)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(svc["spec"]["selector"], labels), "the Service selects the Deployment's pods"
    for other in find(objs, "Deployment"):
        if other is not deployment:
            assert not matches(svc["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"])
    ports = container_ports(main_container(deployment))
    for port in svc["spec"]["ports"]:
        target = port["targetPort"]
        assert (ports.get(target) if isinstance(target, str) else target) in ports.values(), port


@pytest.mark.parametrize("service", SERVICES)
def test_autoscaling_and_disruption_budgets(rendered: tuple[str, list[Obj]], service: str) -> None:
    _overlay, objs = rendered
    deployment = one(objs, "Deployment", service)
    hpa = one(objs, "HorizontalPodAutoscaler", service)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(objs, "PodDisruptionBudget", service)
    assert matches(
        pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


def cpus(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity in CPUs ("500m", "2", 1.5)."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_the_gateway_runs_a_process_per_cpu_of_its_limit(rendered: tuple[str, list[Obj]]) -> None:
    """TRISERVE_GATEWAY_WORKERS is left to auto in the pod; its CPU limit (the cgroup quota auto reads)
    gives several processes, and the request reserves at least half a core for each."""
    from triserve_gateway.cpus import AUTO_MAX_PROCESSES, auto_workers
    from triserve_gateway.settings import GatewaySettings

    _overlay, objs = rendered
    container = main_container(one(objs, "Deployment", "gateway"))
    settings = settings_under("gateway", container_env("gateway", container))
    assert isinstance(settings, GatewaySettings) and settings.workers == 0, "auto in the pod"
    limit, request = (cpus(container["resources"][k]["cpu"]) for k in ("limits", "requests"))
    processes = auto_workers(affinity_cpus=64, cpu_limit=limit).count  # a node with many cores
    assert 2 <= processes <= AUTO_MAX_PROCESSES, (limit, processes)
    assert request >= processes / 2, "the scheduler reserves at least half a core per process"


def test_servicemonitors_scrape_the_metrics_endpoints(
    rendered: tuple[str, list[Obj]], routes: dict[str, dict[str, str]]
) -> None:
    _overlay, objs = rendered
    for service in SERVICES:
        monitor = one(objs, "ServiceMonitor", service)
        svc = one(objs, "Service", service)
        assert matches(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        (endpoint,) = monitor["spec"]["endpoints"]
        port_name, path = endpoints(service, routes).metrics
        service_port = next(p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"])
        assert service_port["targetPort"] == port_name, (
            f"{service}: scrapes {endpoint['port']}, metrics on {port_name}"
        )
        assert endpoint["path"] == path


def test_network_policy_lets_only_the_gateway_reach_the_backends(rendered: tuple[str, list[Obj]]) -> None:
    _overlay, objs = rendered
    policies = find(objs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny, "a default-deny ingress policy"
    pods = {
        name: one(objs, "Deployment", name)["spec"]["template"]["metadata"]["labels"] for name in SERVICES
    }

    def selects(policy: Obj, labels: dict[str, str]) -> bool:
        selector = policy["spec"]["podSelector"]
        ok = matches(selector.get("matchLabels", {}), labels)
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] == "In"
            ok = ok and labels.get(expr["key"]) in expr["values"]
        return ok

    for backend in BACKENDS:
        rules = [
            r
            for p in policies
            if p["spec"]["podSelector"] and selects(p, pods[backend])
            for r in p["spec"].get("ingress", [])
        ]
        assert rules, f"no policy admits traffic to {backend}"
        serving = set(container_ports(main_container(one(objs, "Deployment", backend))))
        metrics_port = "metrics" if backend == "torchserve" else "http"
        for rule in rules:
            (peer,) = rule["from"]
            if "podSelector" in peer:
                assert not peer.get("namespaceSelector")
                assert matches(peer["podSelector"]["matchLabels"], pods["gateway"])
                for other in ("onnx", "paddle", "torchserve"):
                    assert not matches(peer["podSelector"]["matchLabels"], pods[other])
            else:  # Prometheus: metrics ports only
                assert set(peer) == {"namespaceSelector"}
                allowed = {p["port"] for p in rule["ports"]} & serving
                assert allowed == {metrics_port}, f"{backend}: monitoring may reach {allowed}"


def test_ingress_exposes_only_the_gateway(rendered: tuple[str, list[Obj]]) -> None:
    _overlay, objs = rendered
    (ingress,) = find(objs, "Ingress")
    backends = [
        path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]
    ]
    gateway_ports = {p["name"] for p in one(objs, "Service", "gateway")["spec"]["ports"]}
    for backend in backends:
        assert backend["name"] == "gateway" and backend["port"]["name"] in gateway_ports
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    max_body = settings_under("gateway", {}).max_body_bytes
    assert body == f"{max_body // (1024 * 1024)}m", "the ingress lets through what the gateway accepts"


def test_gateway_routing_configmap(rendered: tuple[str, list[Obj]]) -> None:
    """The gateway reads the ConfigMap's routing (its own loader) and reaches each backend's Service
    on the port that leads to the container port serving that backend's API."""
    from triserve_gateway.config import RoutingConfig, apply_overrides, load_routing

    _overlay, objs = rendered
    deployment = one(objs, "Deployment", "gateway")
    container = main_container(deployment)
    settings = settings_under("gateway", container_env("gateway", container))
    routing_file = Path(str(settings.routing_file))  # type: ignore[attr-defined]
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == routing_file.parent)
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    config_map = one(objs, "ConfigMap", volume["configMap"]["name"])
    routing = apply_overrides(
        RoutingConfig.model_validate(yaml.safe_load(config_map["data"][routing_file.name])),
        settings,  # type: ignore[arg-type]
    )
    for name, backend in routing.backends.items():
        for url, role in (
            (backend.url, "inference" if name == "torchserve" else "http"),
            (backend.management_url, "management"),
        ):
            if url is None:
                continue
            host = url.split("://", 1)[1].split(":", 1)[0]
            svc = one(objs, "Service", host)
            service_port = next(p for p in svc["spec"]["ports"] if p["port"] == url_port(url))
            backend_container = main_container(one(objs, "Deployment", host))
            served = served_ports(host, container_env(host, backend_container))
            assert container_ports(backend_container)[service_port["targetPort"]] == served[role], url
    # Apart from the in-cluster URLs, the routing is the project's services/gateway/routing.yaml.
    original = load_routing().model_dump()
    in_cluster = RoutingConfig.model_validate(
        yaml.safe_load(config_map["data"][routing_file.name])
    ).model_dump()
    for cfg in (original, in_cluster):
        for backend in cfg["backends"].values():
            backend.pop("url")
            backend.pop("management_url")
            backend.pop("metrics_url")
    assert in_cluster == original, "k8s/base/routing.yaml drifted from services/gateway/routing.yaml"


def test_trainer_job_writes_into_a_volume(rendered: tuple[str, list[Obj]]) -> None:
    from triserve_trainer.cli import build_parser

    _overlay, objs = rendered
    job = one(objs, "Job", "trainer")
    container = main_container(job)
    args = build_parser().parse_args(container["args"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    for path in (str(args.store), str(args.data_dir)):
        claim = volumes[mounts[path]]["persistentVolumeClaim"]["claimName"]
        one(objs, "PersistentVolumeClaim", claim)
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert pod_spec(job)["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"].split(":")[0] == "triserve/trainer"


def test_overlay_images_and_gpus(rendered: tuple[str, list[Obj]]) -> None:
    overlay, objs = rendered
    for deployment in [*find(objs, "Deployment"), *find(objs, "Job")]:
        container = main_container(deployment)
        name = container["image"].split("/")[1].split(":")[0]
        assert name in IMAGES
        gpu = overlay == "gpu" and name in BACKENDS
        assert container["image"].endswith(":gpu" if gpu else ":cpu")
        limits = container["resources"]["limits"]
        pod = pod_spec(deployment)
        if gpu:
            assert limits["nvidia.com/gpu"] == "1"
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
            assert pod["nodeSelector"]
            if name != "torchserve":  # the GPU env is valid for the service
                settings_under(name, container_env(name, container))
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in pod


def test_gateway_keys_come_from_a_secret_and_management_is_fenced(rendered: tuple[str, list[Obj]]) -> None:
    _overlay, objs = rendered
    container = main_container(one(objs, "Deployment", "gateway"))
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["TRISERVE_GATEWAY_MANAGEMENT_KEY"] == {"name": "gateway-keys", "key": "management-key"}
    assert refs["TRISERVE_GATEWAY_INFERENCE_KEY"]["optional"] is True
    management = one(objs, "Service", "gateway-management")
    assert [p["targetPort"] for p in management["spec"]["ports"]] == ["management"]
    assert "management" not in {p["name"] for p in one(objs, "Service", "gateway")["spec"]["ports"]}
    (policy,) = [p for p in find(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("gateway-ingress")]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if "management" in ports:
            (peer,) = rule["from"]
            assert ports == {"management"} and set(peer) == {"podSelector"}
            assert peer["podSelector"]["matchLabels"]["triserve.io/management-client"] == "true"
        else:
            assert "management" not in ports


# --------------------------------------------------------------------------- in step with compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config(COMPOSE, profiles=("train",))


def workload_containers(objs: list[Obj]) -> dict[str, Obj]:
    """Image name (gateway, onnx, ..., trainer) → the container running it."""
    out = {}
    for obj in [*find(objs, "Deployment"), *find(objs, "Job")]:
        container = main_container(obj)
        out[container["image"].split("/")[1].split(":")[0]] = container
    return out


def test_cpu_overlay_runs_the_images_compose_runs(compose: dict[str, Any]) -> None:
    containers = workload_containers(render("cpu"))
    assert set(containers) == set(IMAGES)
    for image, container in containers.items():
        assert container["image"] == compose["services"][image]["image"], image


def test_env_names_are_ones_the_services_read(
    rendered: tuple[str, list[Obj]], compose: dict[str, Any]
) -> None:
    """Every variable the manifests, compose and the images set is configuration the process reads
    (a renamed setting cannot leave a stale name behind in one of them)."""
    _overlay, objs = rendered
    for image, container in workload_containers(objs).items():
        known = env_names_read_by(image)
        sources = {
            "k8s": {e["name"] for e in container.get("env", [])},
            "compose": set(compose["services"][image].get("environment") or {}),
            "Dockerfile": {k for k in dockerfile(image).runtime.env() if k.startswith(("TRISERVE_", "TS_"))},
        }
        for where, names in sources.items():
            assert names <= known, f"{image}: {where} sets {sorted(names - known)}, which nothing reads"


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_and_compose_configure_each_service_alike(service: str, compose: dict[str, Any]) -> None:
    """Same bind address, ports and model store in a pod (cpu overlay) as in the compose container."""
    k8s_env = container_env(service, workload_containers(render("cpu"))[service])
    compose_env = dockerfile(service).runtime.env()
    compose_env.update((compose["services"][service].get("environment") or {}).items())
    assert served_ports(service, k8s_env) == served_ports(service, compose_env)
    if service == "torchserve":
        for key in ("TS_HOST", "TS_MODEL_STORE"):
            assert k8s_env.get(key) == compose_env.get(key), key
        return
    in_k8s, in_compose = settings_under(service, k8s_env), settings_under(service, compose_env)
    fields = {"host", "port", "model_store", "model_name", "model_version"} & set(type(in_k8s).model_fields)
    assert {"host", "port", "model_store"} <= fields
    for field in sorted(fields):
        assert getattr(in_k8s, field) == getattr(in_compose, field), f"{service}: {field}"


def test_trainer_job_and_compose_trainer_agree(compose: dict[str, Any]) -> None:
    from triserve_trainer.cli import build_parser

    job = main_container(one(render("cpu"), "Job", "trainer"))
    svc = compose["services"]["trainer"]
    in_job, in_compose = build_parser().parse_args(job["args"]), build_parser().parse_args(svc["command"])
    assert in_job.store == in_compose.store and in_job.work_dir == in_compose.work_dir
    data = container_env("trainer", job)["TRISERVE_MNIST_DIR"]
    assert data in {m["mountPath"] for m in job["volumeMounts"]}
    assert data in {v.split(":")[1] for v in svc["volumes"] if isinstance(v, str)} | {
        v.get("target") for v in svc["volumes"] if isinstance(v, dict)
    }
