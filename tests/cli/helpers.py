"""Helpers of the launcher tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def ps_lines() -> list[str]:
    """``ps`` output, one process a line (state and command line), zombies excluded."""
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if not line.lstrip().startswith("Z")]
