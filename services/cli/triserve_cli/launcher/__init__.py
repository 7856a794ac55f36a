"""The local launcher behind ``triserve up | down | run | status``: the platform as local processes.

Four services, each started as its own process session (``start_new_session``) with its log under
``<run dir>/logs/``: TorchServe (java frontend + python workers), the ONNX service, the Paddle service
and the gateway, which is told the three backend URLs. ``up`` returns once every service answers
ready (the gateway's ``/v2/health/ready`` included); ``down`` SIGTERMs each process group, waits, then
SIGKILLs what is left.

Python API (the CLI, the tests and the benchmark use it)::

    from triserve_cli.launcher import Platform, PlatformConfig

    config = PlatformConfig.from_env(run_dir=tmp_path / "run", gateway_port=18080)
    with Platform(config) as platform:  # start(): launch + wait until ready; stop() on exit
        httpx.put(f"{platform.gateway_url}/predictions/mnist", content=png)

    Platform(PlatformConfig.from_env()).stop()  # stop what another process started in run/

State in the run folder: ``<service>.pid`` (the pid = process group id of each service),
``platform.json`` (URLs, log paths and the run id), ``logs/``. Every process started carries
``TRISERVE_RUN_ID=<run id>`` in its environment: ``down`` only signals processes that carry it, and
sweeps any that left their group, so it stops exactly what ``up`` started.

Modules: :mod:`.config` (launcher settings and :class:`PlatformConfig`), :mod:`.specs` (how each
service is started), :mod:`.processes` (``/proc`` scans, signals, probes), :mod:`.supervisor`
(:class:`Platform`: start, watch, stop), :mod:`.commands` (the CLI subcommands).
"""

from triserve_cli.launcher.config import RUN_ID_ENV, PlatformConfig, PlatformError, PlatformSettings
from triserve_cli.launcher.processes import ProcInfo, log_tail, marked_processes
from triserve_cli.launcher.specs import ServiceSpec, service_specs, torchserve_store
from triserve_cli.launcher.supervisor import Platform

__all__ = [
    "RUN_ID_ENV",
    "Platform",
    "PlatformConfig",
    "PlatformError",
    "PlatformSettings",
    "ProcInfo",
    "ServiceSpec",
    "log_tail",
    "marked_processes",
    "service_specs",
    "torchserve_store",
]
