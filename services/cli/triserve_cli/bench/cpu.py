"""CPU accounting from ``/proc`` (Linux): who used the cores during a measurement.

On a small machine the load generator, the services and anything else running share the cores; each
measurement records the cores used by the services under test, by wrk, and by everything else
("foreign" load, e.g. another job on the box), so a disturbed run can be seen, and re-measured.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def system_busy_s() -> float:
    """CPU seconds spent busy (all but idle and iowait) by every core since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / _TICK


def group_cpu_s(pgids: Iterable[int]) -> float:
    """CPU seconds (user + system, all threads) used so far by the live processes of these groups."""
    wanted = set(pgids)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) in wanted:  # fields[2] = pgrp; [11], [12] = utime, stime
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


@dataclass(frozen=True)
class Sample:
    """A point in time: busy CPU of the machine and of the process groups under test."""

    busy_s: float
    groups_s: float
    own_s: float

    @classmethod
    def take(cls, pgids: Iterable[int]) -> Sample:
        """Read the counters now (``own_s``: this process, which drives the run)."""
        times = os.times()
        return cls(system_busy_s(), group_cpu_s(pgids), times.user + times.system)


def split(before: Sample, after: Sample, generator_s: float, seconds: float) -> dict[str, float]:
    """Cores used between two samples by the services, the generator (given) and everything else."""
    busy = after.busy_s - before.busy_s
    services = after.groups_s - before.groups_s
    own = after.own_s - before.own_s
    foreign = max(0.0, busy - services - generator_s - own)
    return {
        "services_cpu": services / seconds,
        "generator_cpu": generator_s / seconds,
        "foreign_cpu": foreign / seconds,
    }
