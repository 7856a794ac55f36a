"""Free ports come from below the ephemeral range, are bindable and never repeat."""

from __future__ import annotations

import socket
from pathlib import Path

from triserve_common.ports import free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 < port < ephemeral_start for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))
        assert sock.getsockname()[1] == ports[-1]
