"""How many gateway processes ``TRISERVE_GATEWAY_WORKERS=0`` (auto, the default) runs, and why.

Auto is the CPUs this process may actually use, at most :data:`AUTO_MAX_PROCESSES`:

- the CPUs in its affinity mask (``taskset``, ``docker --cpuset-cpus``, a k8s static CPU policy);
- fewer when a cgroup CPU quota is set (``docker --cpus``, a k8s CPU limit, systemd ``CPUQuota``): a
  container sees every host CPU in its affinity mask, but may only use quota / period of them.
  cgroup v2: ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``); v1: ``cpu.cfs_quota_us`` and
  ``cpu.cfs_period_us`` (quota -1 = none). The process's own cgroup and every parent up to the mount
  are read (the tightest counts); a fractional quota rounds up (1.5 CPUs: 2 processes), at least 1.

Everything here is pure but for :func:`detect_auto_workers` (and :func:`resolve_workers`), which read
``/proc/self/cgroup`` and ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

AUTO_MAX_PROCESSES = 4
"""Most processes auto picks: more are unmeasured, and every process has its own batchers (smaller
batches), circuit breakers and admission limits. Set ``TRISERVE_GATEWAY_WORKERS`` for more."""
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class WorkerChoice:
    """How many gateway processes, and the reason (logged at start)."""

    count: int
    reason: str


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _chain(mount: Path, cgroup_path: str) -> list[Path]:
    """``mount`` joined with the process's cgroup path, then every parent up to ``mount`` itself
    (just ``mount`` when that path is not visible there, as in a container without a cgroup namespace)."""
    own = mount / cgroup_path.strip("/")
    if not own.is_dir():
        return [mount]
    return [own, *[p for p in own.parents if p.is_relative_to(mount)]]


def cgroup_cpu_limit(self_cgroup: str, root: Path = CGROUP_ROOT) -> float | None:
    """The tightest CPU quota (in CPUs, quota / period) of this process's cgroups, or None when none is set.

    ``self_cgroup`` is ``/proc/self/cgroup``'s text: ``0::/path`` (v2) or ``N:cpu,cpuacct:/path`` (v1).
    """
    limits: list[float] = []
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2, unified
            limits += [x for d in _chain(root, path) if (x := _v2_limit(d)) is not None]
        elif "cpu" in controllers.split(","):
            for mount in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu", root):
                if mount.is_dir():
                    limits += [x for d in _chain(mount, path) if (x := _v1_limit(d)) is not None]
                    break
    return min(limits) if limits else None


def auto_workers(affinity_cpus: int, cpu_limit: float | None, cap: int = AUTO_MAX_PROCESSES) -> WorkerChoice:
    """One process per usable CPU: the affinity mask's, fewer under a CPU quota, at most ``cap``."""
    count = max(1, affinity_cpus)
    reason = f"auto: {affinity_cpus} CPUs in the affinity mask"
    if cpu_limit is not None:
        quota_cpus = max(1, math.ceil(cpu_limit - 1e-9))
        reason += f", cgroup CPU quota {cpu_limit:g} CPUs"
        count = min(count, quota_cpus)
    if count > cap:
        reason += f", capped at {cap} (set TRISERVE_GATEWAY_WORKERS for more)"
        count = cap
    return WorkerChoice(count, reason)


def resolve_workers(workers: int) -> WorkerChoice:
    """``TRISERVE_GATEWAY_WORKERS``'s value as the gateway applies it: a number as given, 0 = auto."""
    if workers > 0:
        return WorkerChoice(workers, f"TRISERVE_GATEWAY_WORKERS={workers}")
    return detect_auto_workers()


def detect_auto_workers() -> WorkerChoice:
    """:func:`auto_workers` for this process (its affinity mask and cgroups)."""
    try:
        self_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        self_cgroup = ""
    return auto_workers(len(os.sched_getaffinity(0)), cgroup_cpu_limit(self_cgroup))
