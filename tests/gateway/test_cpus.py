"""How many gateway processes auto picks (``triserve_gateway.cpus``): the affinity mask, the cgroup CPU
quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, the tightest of the process's cgroup and
its parents) and the cap, over fake cgroup trees in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from triserve_gateway.cpus import (
    AUTO_MAX_PROCESSES,
    auto_workers,
    cgroup_cpu_limit,
    detect_auto_workers,
    resolve_workers,
)
from triserve_gateway.settings import GatewaySettings


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---- cgroup v2

def test_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    write(tmp_path / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit("0::/kubepods/pod1\n", tmp_path) == 1.5


def test_v2_max_is_no_limit(tmp_path: Path) -> None:
    write(tmp_path / "user.slice" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit("0::/user.slice\n", tmp_path) is None


def test_v2_no_cpu_max_file_is_no_limit(tmp_path: Path) -> None:
    (tmp_path / "user.slice").mkdir()
    assert cgroup_cpu_limit("0::/user.slice\n", tmp_path) is None
    assert cgroup_cpu_limit("0::/\n", tmp_path) is None


def test_v2_a_parent_quota_limits_its_children(tmp_path: Path) -> None:
    write(tmp_path / "system.slice" / "cpu.max", "200000 100000\n")
    write(tmp_path / "system.slice" / "triserve.service" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit("0::/system.slice/triserve.service\n", tmp_path) == 2.0
    write(tmp_path / "system.slice" / "triserve.service" / "cpu.max", "50000 100000\n")
    assert cgroup_cpu_limit("0::/system.slice/triserve.service\n", tmp_path) == 0.5


def test_v2_in_a_container_the_mount_is_its_own_cgroup(tmp_path: Path) -> None:
    """With a cgroup namespace the path is ``/``; without one it names a host path not mounted here."""
    write(tmp_path / "cpu.max", "300000 100000\n")
    assert cgroup_cpu_limit("0::/\n", tmp_path) == 3.0
    assert cgroup_cpu_limit("0::/system.slice/docker-abc.scope\n", tmp_path) == 3.0


def test_malformed_files_are_no_limit(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "garbage\n")
    assert cgroup_cpu_limit("0::/\n", tmp_path) is None
    assert cgroup_cpu_limit("not a cgroup line\n", tmp_path) is None
    assert cgroup_cpu_limit("", tmp_path) is None


# ---- cgroup v1

def test_v1_quota_under_the_cpu_controller_mount(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    write(cpu / "cpu.cfs_quota_us", "250000\n")
    write(cpu / "cpu.cfs_period_us", "100000\n")
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert cgroup_cpu_limit(text, tmp_path) == 2.5


def test_v1_quota_minus_one_is_no_limit(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu" / "user.slice"
    write(cpu / "cpu.cfs_quota_us", "-1\n")
    write(cpu / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit("3:cpu,cpuacct:/user.slice\n", tmp_path) is None


def test_v1_a_parent_quota_counts(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    write(cpu / "kubepods" / "cpu.cfs_quota_us", "100000\n")
    write(cpu / "kubepods" / "cpu.cfs_period_us", "100000\n")
    (cpu / "kubepods" / "pod1").mkdir()
    assert cgroup_cpu_limit("3:cpu,cpuacct:/kubepods/pod1\n", tmp_path) == 1.0


# ---- the choice

def test_auto_is_the_affinity_mask_without_a_quota() -> None:
    choice = auto_workers(2, None)
    assert choice.count == 2 and "2 CPUs in the affinity mask" in choice.reason


def test_a_quota_lowers_it_rounding_up() -> None:
    assert auto_workers(16, 1.5).count == 2
    assert auto_workers(16, 2.0).count == 2
    assert auto_workers(16, 0.5).count == 1
    assert "cgroup CPU quota 1.5 CPUs" in auto_workers(16, 1.5).reason


def test_a_quota_above_the_mask_changes_nothing() -> None:
    assert auto_workers(2, 8.0).count == 2


def test_auto_is_capped() -> None:
    choice = auto_workers(64, None)
    assert choice.count == AUTO_MAX_PROCESSES == 4
    assert "capped at 4" in choice.reason
    assert auto_workers(64, 3.0).count == 3


def test_at_least_one_process() -> None:
    assert auto_workers(0, None).count == 1


def test_a_number_is_taken_as_given() -> None:
    assert resolve_workers(8).count == 8
    assert resolve_workers(8).reason == "TRISERVE_GATEWAY_WORKERS=8"


def test_the_default_setting_is_auto_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRISERVE_GATEWAY_WORKERS", raising=False)
    settings = GatewaySettings()
    assert settings.workers == 0
    detected = detect_auto_workers()
    assert settings.worker_choice() == detected
    assert 1 <= detected.count <= min(AUTO_MAX_PROCESSES, len(os.sched_getaffinity(0)))
    monkeypatch.setenv("TRISERVE_GATEWAY_WORKERS", "3")
    assert GatewaySettings().worker_count() == 3
