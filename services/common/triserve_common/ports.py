"""Free TCP ports for services started side by side (tests, ``triserve bench``).

A port taken from the kernel's ephemeral range (``bind(0)``) can be handed to
an outgoing connection of another process before the service that was meant to
listen on it binds it ("Address already in use"). Ports here come from below
the ephemeral range, are checked free by binding, and are never handed out
twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_LOW = 20000
_FALLBACK_EPHEMERAL_START = 32768
_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
    """First port of the kernel's ephemeral range (Linux), 32768 elsewhere."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_START


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, outside the ephemeral range."""
    high = max(_ephemeral_start(), _LOW + 1000)
    rng = random.SystemRandom()
    with _lock:
        for _ in range(200):
            port = rng.randrange(_LOW, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
