"""The gateway as N processes (``TRISERVE_GATEWAY_WORKERS``): start, serve, supervise, stop.

One Python process runs one event loop on one core; N processes serve the inference port together:

- every process binds its own listening socket on the inference port with ``SO_REUSEPORT``
  (:func:`~triserve_gateway.listeners.bind_shared`) and the kernel spreads connections over them.
  The primary first binds the port exclusively for a moment, so a port another program (or another
  gateway) holds is an error, as with one process, rather than silently shared;
- the primary (process 0) also serves the management and metrics ports and owns the model
  registry; processes 1..N-1 are started with multiprocessing's ``spawn``, build their own app
  (:func:`~triserve_gateway.app.create_app` with their :class:`~triserve_gateway.process.ProcessRole`)
  with their own batchers, backend clients and health checks, and mirror the registry
  (:mod:`triserve_gateway.registry_sync`);
- metrics: ``PROMETHEUS_MULTIPROC_DIR`` is set (a fresh directory per run, or the one the
  environment names, emptied) before prometheus-client is used (:func:`prepare`);
- a follower that exits is started again (after 5 s if it lived less than 10 s) and its live gauges
  are dropped; the primary's stop (SIGTERM/SIGINT) stops them, and a follower whose primary is gone
  stops by itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from fastapi import FastAPI

    from triserve_gateway.process import ProcessRole
    from triserve_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

BACKLOG = 4096
RESTART_AFTER_S = 5.0
"""Pause before starting again a follower that lived less than :data:`MIN_LIFE_S`."""
MIN_LIFE_S = 10.0


def prepare(settings: GatewaySettings) -> ProcessRole:
    """This run's role (the primary of ``settings.worker_choice()``'s count, logged with its reason); with
    several processes, the run directory and ``PROMETHEUS_MULTIPROC_DIR``, set before any metric exists."""
    from triserve_gateway.process import ProcessRole

    choice = settings.worker_choice()
    count = choice.count
    log.info("gateway: %d process%s (%s)", count, "" if count == 1 else "es", choice.reason)
    if count == 1:
        return ProcessRole()
    run_dir = Path(tempfile.mkdtemp(prefix="triserve-gateway-"))
    (run_dir / "registry").mkdir()
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = Path(given) if given else run_dir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):  # a previous run's values must not count
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from prometheus_client import values

    # in case prometheus-client was imported before: its value class as the environment now says
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return ProcessRole(0, count, run_dir, metrics_dir, os.getpid())


def serve_gateway(app: FastAPI, settings: GatewaySettings, role: ProcessRole) -> None:
    """Serve the gateway: one process as before, or the primary of ``role.count`` (module doc)."""
    from triserve_gateway.app import listeners, serve
    from triserve_gateway.grpc_server import serve_in_process
    from triserve_gateway.listeners import bind, bind_shared, serve_listeners

    serve_in_process(app, role, BACKLOG)  # gRPC (its port checked now, before any follower starts)
    if not role.multiprocess:
        serve(app, settings)
        return
    followers = Followers(settings, role)
    try:
        # every port first (a port in use ends the start here, before any follower): the inference port
        # exclusively for a moment, so that one held by anything else is an error rather than shared
        bind(settings.host, settings.port, BACKLOG).close()
        sockets = {"inference": bind_shared(settings.host, settings.port, BACKLOG)}
        sockets.update((x.name, bind(x.host, x.port, BACKLOG)) for x in listeners(app)[1:])
        followers.start()
        log.info("gateway: %d processes on the inference port (pids %d, %s)", role.count, os.getpid(),
                 ", ".join(str(p.pid) for p in followers.procs.values()))
        # uvicorn re-raises the stop signal once it has shut down, with the handler it found: make that
        # one end the process through this cleanup (a signal before uvicorn runs does the same)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        serve_listeners(listeners(app), app, settings, settings.server_limits(), sockets=sockets)
    finally:
        followers.stop(settings.graceful_shutdown_s + 5.0)
        if role.run_dir is not None:
            shutil.rmtree(role.run_dir, ignore_errors=True)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_follower(settings: GatewaySettings, role: ProcessRole) -> None:
    """A follower process's body: its app, on its own ``SO_REUSEPORT`` socket of the inference port."""
    from triserve_common.errors import TriserveError
    from triserve_common.server import configure_logging
    from triserve_gateway.app import create_app, listeners
    from triserve_gateway.grpc_server import serve_in_process
    from triserve_gateway.listeners import bind_shared, serve_listeners

    configure_logging(settings.log_level)
    try:
        app = create_app(settings, role=role)
    except TriserveError as exc:
        log.critical("gateway process %d: cannot start: %s", role.index, exc.message)
        sys.exit(1)
    serve_in_process(app, role, BACKLOG)
    inference = listeners(app)[0]
    sock = bind_shared(inference.host, inference.port, BACKLOG)
    serve_listeners([inference], app, settings, settings.server_limits(), sockets={"inference": sock})


class Followers:
    """Processes 1..N-1: started, restarted when one exits, stopped (a watcher thread in the primary)."""

    def __init__(self, settings: GatewaySettings, role: ProcessRole) -> None:
        self.settings = settings
        self.role = role
        self.context = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.started: dict[int, float] = {}
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="gateway-followers", daemon=True)

    def start(self) -> None:
        for index in range(1, self.role.count):
            self._spawn(index)
        self._watcher.start()

    def stop(self, timeout_s: float) -> None:
        """SIGTERM every follower (graceful: in-flight requests finish), SIGKILL after ``timeout_s``."""
        self._stopping.set()
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("gateway process %s did not stop in %.0fs: killed", proc.name, timeout_s)
                proc.kill()
                proc.join(5.0)

    def _spawn(self, index: int) -> None:
        role = replace(self.role, index=index)
        proc = self.context.Process(
            target=run_follower, args=(self.settings, role), name=f"triserve-gateway-{index}", daemon=True
        )
        proc.start()
        self.procs[index] = proc
        self.started[index] = time.monotonic()

    def _watch(self) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        while not self._stopping.is_set():
            sentinels = {proc.sentinel: index for index, proc in self.procs.items()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                if self._stopping.is_set():
                    return
                index = sentinels[cast(int, sentinel)]
                proc = self.procs[index]
                proc.join()
                log.error("gateway process %d (pid %s) exited with %s; starting it again",
                          index, proc.pid, proc.exitcode)
                if proc.pid is not None:
                    mark_process_dead(proc.pid, str(self.role.metrics_dir))  # type: ignore[no-untyped-call]
                short_lived = time.monotonic() - self.started[index] < MIN_LIFE_S
                if short_lived and self._stopping.wait(RESTART_AFTER_S):
                    return
                self._spawn(index)
