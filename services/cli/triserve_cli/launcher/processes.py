"""The launcher's view of processes: ``/proc`` scans by run id, process-group signals, busy ports,
the Java version, log tails and readiness probes (Linux)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from triserve_cli.launcher.config import RUN_ID_ENV


@dataclass(frozen=True)
class ProcInfo:
    """A live (non-zombie) process carrying the run id."""

    pid: int
    pgid: int
    cmdline: str


def marked_processes(run_id: str) -> list[ProcInfo]:
    """Every live process whose environment has ``TRISERVE_RUN_ID=<run_id>`` (Linux ``/proc``)."""
    needle = f"{RUN_ID_ENV}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] in ("Z", "X"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        found.append(ProcInfo(pid=int(entry.name), pgid=int(fields[2]), cmdline=cmdline.strip()))
    return found


def spawn(argv: tuple[str, ...], env: dict[str, str], cwd: Path, log: BinaryIO) -> subprocess.Popen[bytes]:
    """Start a service in its own session (its process group is signalled as a whole), stdin closed,
    stdout and stderr into ``log``."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to a process group, ignoring one that is gone or not ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def java_version(java: str | None = None) -> int | None:
    """Major version of ``$JAVA_HOME/bin/java`` or ``java`` on PATH; None when there is none."""
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or a note that there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def probe(url: str) -> bool:
    """Whether ``url`` answers 200 within 2 seconds."""
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
