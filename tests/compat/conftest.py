"""The real platform for the compatibility tests: TorchServe, the ONNX and Paddle services and the gateway,
each its own process on free 127.0.0.1 ports, started with NO model loaded (as TorchServe's own test
harness starts TorchServe), over a copy of the model store.

The copy holds every committed model version, plus two made from ``mnist/1`` so that several
models and several versions of one model can be exercised whatever the committed store holds: a
next ``mnist`` version and a model ``digits`` (same weights; manifests and archive re-signed).

The backends are shared by the test modules (one TorchServe JVM); each module starts its own
gateway on them (:func:`start_gateway`) and leaves nothing registered behind.
"""

from __future__ import annotations

import json
import shutil
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ServiceProcess
from tests.support.stack import free_port_config, service_processes
from triserve_cli.launcher import PlatformConfig
from triserve_common.manifest import MANIFEST_FILE, file_entry, list_versions, read_manifest

BACKENDS = ("onnx", "paddle", "torchserve")


@dataclass(frozen=True)
class CompatStore:
    """The store copy and the model versions made for the tests."""

    root: Path
    extra_version: str
    """The ``mnist`` version made from ``mnist/1``."""
    extra_model: str = "digits"

    def versions(self) -> list[tuple[str, str]]:
        """Every (model, version) of the store."""
        return [
            (p.name, v)
            for p in sorted(self.root.iterdir())
            if p.is_dir()
            for v in list_versions(self.root, p.name)
        ]


def _resign_archive(mar: Path, model_version: str) -> None:
    """Rewrite ``mar``'s ``MAR-INF/MANIFEST.json`` with another ``modelVersion``."""
    tmp = mar.with_suffix(".tmp")
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = model_version
                data = json.dumps(manifest, indent=2).encode()
            dst.writestr(info, data)
    tmp.replace(mar)


def derive_version(store: Path, source: Path, name: str, version: str) -> None:
    """``store/name/version``: ``source``'s artifacts as another model or version, manifest re-signed."""
    target = store / name / version
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("training", MANIFEST_FILE))
    old_mar = target / f"{read_manifest(source).name}.mar"
    mar = target / f"{name}.mar"
    if old_mar != mar:
        old_mar.rename(mar)
    _resign_archive(mar, version)
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    manifest["name"], manifest["version"] = name, version
    for artifact in manifest["artifacts"].values():
        artifact["files"] = [
            file_entry(target, mar).model_dump()
            if f["path"].endswith(".mar")
            else file_entry(target, target / f["path"]).model_dump()
            for f in artifact["files"]
        ]
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="session")
def test_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> CompatStore:
    root = tmp_path_factory.mktemp("compat-store") / "model_store"
    shutil.copytree(model_store, root, ignore=shutil.ignore_patterns("training"))
    versions = [v for v in list_versions(root, "mnist") if v.isdigit()]
    extra = str(max(int(v) for v in versions) + 1)
    derive_version(root, model_store / "mnist" / "1", "mnist", extra)
    derive_version(root, model_store / "mnist" / "1", "digits", "1")
    return CompatStore(root, extra)


@dataclass
class Backends:
    """The running backends and the platform config they were started from."""

    config: PlatformConfig
    procs: dict[str, ServiceProcess]
    log_dir: Path

    @property
    def ts_management(self) -> str:
        return self.config.url(self.config.ts_management_port)

    def held(self) -> dict[str, set[tuple[str, str]]]:
        """What each backend holds now, asked directly (not through the gateway)."""
        held: dict[str, set[tuple[str, str]]] = {}
        for name in ("onnx", "paddle"):
            url = self.config.url(getattr(self.config, f"{name}_port"))
            rows = httpx.post(f"{url}/v2/repository/index", json={"ready": True}, timeout=30).json()
            held[name] = {(r["name"], r["version"]) for r in rows}
        ts: set[tuple[str, str]] = set()
        for model in httpx.get(f"{self.ts_management}/models", timeout=30).json()["models"]:
            for entry in httpx.get(
                f"{self.ts_management}/models/{model['modelName']}/all", timeout=30
            ).json():
                ts.add((entry["modelName"], entry["modelVersion"]))
        held["torchserve"] = ts
        return held


@pytest.fixture(scope="session")
def backends(
    test_store: CompatStore, service_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backends]:
    config = free_port_config(tmp_path_factory.mktemp("compat-run"), test_store.root, models="none")
    procs = service_processes(config, service_logs)
    started: list[ServiceProcess] = []
    try:
        ts_thread = threading.Thread(target=procs["torchserve"].start)  # the JVM is the slow one
        ts_thread.start()
        for name in ("onnx", "paddle"):
            procs[name].start()
            started.append(procs[name])
        ts_thread.join()
        started.append(procs["torchserve"])
        yield Backends(config, procs, service_logs)
    finally:
        for proc in reversed(started):
            proc.stop()


@dataclass
class Gateway:
    """A running gateway: its three listeners and its management key (None = auth switched off)."""

    proc: ServiceProcess
    inference: str
    management: str
    metrics: str
    key: str | None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def mgmt(self, method: str, path: str, timeout: float = 240.0, **kw: object) -> httpx.Response:
        """A management call with the key."""
        headers = {**self.auth, **dict(kw.pop("headers", {}) or {})}  # type: ignore[call-overload]
        return httpx.request(method, self.management + path, headers=headers, timeout=timeout, **kw)  # type: ignore[arg-type]


def start_gateway(backends: Backends, name: str, env: Mapping[str, str]) -> Gateway:
    """A gateway on ``backends`` with the platform's own spec (free ports), plus ``env``."""
    spec_env = {"TRISERVE_GATEWAY_HEALTH_INTERVAL_S": "0.5", **env}
    proc = service_processes(backends.config, backends.log_dir, extra_env={"gateway": spec_env})["gateway"]
    proc.name = name
    proc.log_path = backends.log_dir / f"{name}.log"
    proc.start()
    cfg = backends.config
    key = env.get("TRISERVE_GATEWAY_MANAGEMENT_KEY")
    return Gateway(
        proc, cfg.url(cfg.gateway_port), cfg.url(cfg.management_port), cfg.url(cfg.metrics_port), key
    )
