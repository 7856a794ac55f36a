"""The launcher behind ``triserve up/down/run/status`` (process groups, pid files, readiness, cleanup).

These run the launcher on small stand-in processes (bash, ``python -m http.server``) to reach the
paths the real platform rarely takes: SIGKILL escalation, strays that left their group, early exits,
timeouts, busy ports. ``test_platform_e2e.py`` runs it on the real services.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.cli.helpers import alive, ps_lines
from tests.support.procs import free_port
from triserve_cli.config_reference import (
    README_BEGIN,
    README_END,
    config_reference,
    readme_with_reference,
    settings_classes,
)
from triserve_cli.launcher import Platform, PlatformConfig, PlatformError, ServiceSpec, marked_processes


def config(tmp_path: Path, **overrides: object) -> PlatformConfig:
    values: dict[str, object] = {
        "run_dir": tmp_path / "run",
        "model_store": tmp_path,
        "stop_timeout_s": 2.0,
        "ready_timeout_s": 30.0,
    }
    values.update(overrides)
    return PlatformConfig.from_env(**values)


def http_server(name: str = "entry") -> ServiceSpec:
    port = free_port()
    return ServiceSpec(
        name=name,
        argv=(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
        env={},
        ready_url=f"http://127.0.0.1:{port}/",
        port_names={"http": port},
    )


def bash(name: str, script: str, ready_url: str) -> ServiceSpec:
    """A stand-in service; ``ready_url``: what tells it is ready (another stand-in's URL will do)."""
    return ServiceSpec(name=name, argv=("bash", "-c", script), env={}, ready_url=ready_url, port_names={})


def test_start_status_stop_kills_stubborn_groups_and_strays(tmp_path: Path) -> None:
    # Ignores SIGTERM (so do its children), and one child leaves the process group via setsid.
    entry = http_server()
    stubborn = bash("stubborn", "trap '' TERM; sleep 600 & setsid sleep 601 & wait", entry.ready_url)
    platform = Platform(config(tmp_path), [stubborn, entry])
    platform.start()
    try:
        run_dir = platform.config.run_dir
        pids = {name: int((run_dir / f"{name}.pid").read_text()) for name in ("stubborn", "entry")}
        status = platform.status()
        assert status["entry"] == f"running (pid {pids['entry']}), ready"
        assert status["stubborn"].startswith(f"running (pid {pids['stubborn']})")
        deadline = time.monotonic() + 15  # the background sleeps may not have exec'd yet
        while time.monotonic() < deadline:
            running = platform.running()
            cmdlines = [p.cmdline for members in running.values() for p in members]
            if "sleep 600" in cmdlines and "sleep 601" in cmdlines:
                break
            time.sleep(0.1)
        assert "sleep 600" in [p.cmdline for p in running["stubborn"]]
        assert [p.cmdline for p in running["(outside its group)"]] == ["sleep 601"]
        assert (platform.log_path("entry")).exists()
        run_id = platform._state()["run_id"]  # type: ignore[index]
        started = marked_processes(run_id)
        assert len(started) == 4  # bash, its 2 sleeps, http.server
    finally:
        lines = platform.stop()
    assert any("SIGKILL" in line for line in lines), lines
    assert [p.pid for p in started if alive(p.pid)] == []
    assert not list(run_dir.glob("*.pid")) and not (run_dir / "platform.json").exists()
    assert Platform(platform.config, platform.specs).status() == {"stubborn": "stopped", "entry": "stopped"}


def test_early_exit_fails_fast_with_the_log_tail_and_cleans_up(tmp_path: Path) -> None:
    entry = http_server()
    broken = bash("broken", "echo boom-4711 >&2; exit 3", entry.ready_url)
    platform = Platform(config(tmp_path), [broken, entry])
    with pytest.raises(PlatformError) as info:
        platform.start()
    message = str(info.value)
    assert "broken exited before the platform was ready" in message
    assert "exit code 3" in message and "boom-4711" in message
    assert not list(platform.config.run_dir.glob("*.pid"))
    assert not any(f"http.server {entry.port_names['http']}" in line for line in ps_lines())


def test_not_ready_times_out_naming_the_service(tmp_path: Path) -> None:
    token = f"never-{uuid.uuid4().hex}"
    never = bash(
        "never", f"echo starting-never; exec -a {token} sleep 600", f"http://127.0.0.1:{free_port()}/"
    )
    platform = Platform(config(tmp_path, ready_timeout_s=2.0), [never])
    with pytest.raises(PlatformError) as info:
        platform.start()
    assert "never not ready after 2s" in str(info.value)
    assert "starting-never" in str(info.value)
    assert not any(token in line for line in ps_lines())


def test_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    entry = http_server()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", entry.port_names["http"]))
        sock.listen()
        platform = Platform(config(tmp_path), [entry])
        with pytest.raises(PlatformError, match=f"entry http port {entry.port_names['http']}"):
            platform.start()
    assert not platform.config.run_dir.exists()


def test_second_start_is_refused_while_running(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with Platform(cfg, [http_server()]), pytest.raises(PlatformError, match="still running"):
        Platform(cfg, [http_server()]).start()


def test_config_defaults_come_from_the_service_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo_root: Path
) -> None:
    from triserve_gateway.config import load_routing
    from triserve_gateway.settings import GatewaySettings
    from triserve_onnx.settings import OnnxSettings
    from triserve_paddle.settings import PaddleSettings

    cfg = PlatformConfig.from_env()
    torchserve = load_routing().backends["torchserve"]
    assert (cfg.gateway_port, cfg.onnx_port, cfg.paddle_port) == (
        GatewaySettings().port,
        OnnxSettings().port,
        PaddleSettings().port,
    )
    assert [cfg.ts_inference_port, cfg.ts_management_port, cfg.ts_metrics_port] == [
        int(url.rsplit(":", 1)[1])
        for url in (torchserve.url, torchserve.management_url, torchserve.metrics_url)
    ]
    assert cfg.run_dir == repo_root / "run"
    monkeypatch.chdir(tmp_path)  # from another folder: still the run dir of this checkout
    assert PlatformConfig.from_env().run_dir == repo_root / "run"
    monkeypatch.setenv("TRISERVE_ONNX_PORT", "18001")
    monkeypatch.setenv("TRISERVE_PLATFORM_RUN_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("TRISERVE_GATEWAY_TORCHSERVE_URL", "http://127.0.0.1:18085")
    cfg = PlatformConfig.from_env(paddle_port=18002)
    assert (cfg.onnx_port, cfg.paddle_port, cfg.ts_inference_port) == (18001, 18002, 18085)
    assert cfg.run_dir == tmp_path / "elsewhere"


def test_services_get_the_configured_ports_and_backend_urls(tmp_path: Path) -> None:
    cfg = config(tmp_path, gateway_port=1, onnx_port=2, paddle_port=3, ts_inference_port=4)
    specs = {spec.name: spec for spec in Platform(cfg).specs}
    assert list(specs) == ["torchserve", "onnx", "paddle", "gateway"]
    assert specs["onnx"].env["TRISERVE_ONNX_PORT"] == "2"
    assert specs["torchserve"].env["TS_INFERENCE_PORT"] == "4"
    gateway = specs["gateway"].env
    assert gateway["TRISERVE_GATEWAY_PORT"] == "1"
    assert gateway["TRISERVE_GATEWAY_ONNX_URL"] == "http://127.0.0.1:2"
    assert gateway["TRISERVE_GATEWAY_PADDLE_URL"] == "http://127.0.0.1:3"
    assert gateway["TRISERVE_GATEWAY_TORCHSERVE_URL"] == "http://127.0.0.1:4"
    assert specs["gateway"].ready_url == "http://127.0.0.1:1/v2/health/ready"


def test_gateway_processes_default_to_auto_and_follow_the_flag_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``up``/``run`` pass the gateway 0 (auto) unless ``--gateway-workers`` or the env says otherwise."""
    import argparse

    from triserve_cli.launcher.commands import _config, register

    monkeypatch.delenv("TRISERVE_GATEWAY_WORKERS", raising=False)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def gateway_env(*argv: str) -> str:
        cfg = _config(parser.parse_args(["up", "--run-dir", str(tmp_path), *argv]))
        (gateway,) = [s for s in Platform(cfg).specs if s.name == "gateway"]
        return gateway.env["TRISERVE_GATEWAY_WORKERS"]

    assert gateway_env() == "0"
    assert gateway_env("--gateway-workers", "3") == "3"
    monkeypatch.setenv("TRISERVE_GATEWAY_WORKERS", "2")
    assert gateway_env() == "2"
    assert gateway_env("--gateway-workers", "1") == "1"
    assert parser.parse_args(["run", "--gateway-workers", "2"]).gateway_workers == 2  # up and run only
    assert not hasattr(parser.parse_args(["down"]), "gateway_workers")


def test_down_with_nothing_running(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "triserve_cli", "down", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing recorded" in done.stdout


def test_readme_configuration_reference_is_current(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    block = readme[readme.index(README_BEGIN) + len(README_BEGIN) : readme.index(README_END)]
    assert block == "\n" + config_reference(), "README's configuration reference is stale: run `make readme`"
    assert readme_with_reference(readme) == readme
    for _, cls in settings_classes():
        for name in cls.model_fields:
            assert f"`{cls.model_config['env_prefix']}{name.upper()}`" in block


def test_alive_helper_sees_zombies_as_gone() -> None:
    proc = subprocess.Popen(["true"])
    while not Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1].startswith("Z"):
        pass
    assert not alive(proc.pid)
    proc.wait()
    assert not alive(proc.pid) and alive(os.getpid())
