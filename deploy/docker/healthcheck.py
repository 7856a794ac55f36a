"""Container health check for the triserve images (Docker ``HEALTHCHECK`` and compose).

Probes the same endpoint Kubernetes probes, on the port the service really binds, read the same
way the service reads it — never a port duplicated in the Dockerfile::

    # a triserve Python service: its settings class (env prefix included) gives the port
    healthcheck.py settings triserve_onnx.settings:OnnxSettings /v2/health/ready

    # TorchServe: the address from the config start.sh rendered for this run (TS_RUN_DIR)
    healthcheck.py properties /tmp/torchserve/config.properties inference_address /ping

Exit status 0 when the endpoint answers 2xx within the timeout, 1 otherwise (Docker's contract).
"""

from __future__ import annotations

import importlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

TIMEOUT_S = float(os.environ.get("TRISERVE_HEALTHCHECK_TIMEOUT_S", "3"))
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def local_url(host: str, port: int, path: str) -> str:
    """``http://host:port/path`` as seen from inside the container (wildcard binds → loopback)."""
    host = "127.0.0.1" if host in _ANY_ADDRESS else host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def url_from_settings(spec: str, path: str) -> str:
    """URL of ``path`` on the service configured by ``module:Class`` (a pydantic-settings class)."""
    module_name, _, class_name = spec.partition(":")
    settings = getattr(importlib.import_module(module_name), class_name)()
    return local_url(str(settings.host), int(settings.port), path)


def read_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a java ``.properties`` file (``#``/``!`` comments; later keys win)."""
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def url_from_properties(text: str, key: str, path: str) -> str:
    """URL of ``path`` on the address under ``key`` (e.g. ``inference_address=http://0.0.0.0:8080``)."""
    address = urlsplit(read_properties(text)[key])
    if address.port is None:
        raise ValueError(f"no port in {key}={address.geturl()}")
    return local_url(address.hostname or "", address.port, path)


def probe(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    """Whether ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return False


def resolve(argv: Sequence[str]) -> str:
    """The URL to probe for a command line (see the module docstring)."""
    match list(argv):
        case ["settings", spec, path]:
            return url_from_settings(spec, path)
        case ["properties", file, key, path]:
            with open(file, encoding="utf-8") as fh:
                return url_from_properties(fh.read(), key, path)
        case _:
            raise SystemExit(__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    """Probe once; 0 healthy, 1 not."""
    return 0 if probe(resolve(sys.argv[1:] if argv is None else argv)) else 1


if __name__ == "__main__":
    sys.exit(main())
