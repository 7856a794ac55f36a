"""TorchServe's answers to ``GET /models`` (list, paginated) and ``GET /models/{m}[/{v}|/all]``.

Every field of TorchServe 0.12's describe entry is there, with the gateway's values (workers: each
backend's TorchServe workers and runtime-service instances); the extra ``triserve`` object holds
what only the gateway knows — the backends' URLs, health, state of the version on each, last errors,
routing — which is why this lives on the management port only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from triserve_gateway.admin import BackendAdminError, HeldVersion
from triserve_gateway.manager import ModelManager
from triserve_gateway.reconcile import Registration

log = logging.getLogger(__name__)

MAX_PAGE = 100
JOB_QUEUE_SIZE = 100
"""TorchServe's default ``job_queue_size``: the capacity reported when no TorchServe backend reports one."""


def list_models(manager: ModelManager, limit: int, next_page_token: int) -> dict[str, Any]:
    """TorchServe's paginated list: sorted names, 100 a page at most, ``nextPageToken`` as TorchServe."""
    if limit > MAX_PAGE or limit < 0:
        limit = MAX_PAGE
    start = max(0, next_page_token)
    names = sorted(manager.registered)
    last = start + limit
    answer: dict[str, Any] = {}
    if last > len(names):
        last = len(names)
    else:
        answer["nextPageToken"] = str(last)
    catalog = manager.gateway.catalog
    models = []
    for name in names[start:last]:
        default = catalog.default_version(name)
        reg = manager.registered[name].get(default or "")
        models.append({"modelName": name, "modelUrl": reg.url if reg else name})
    answer["models"] = models
    return answer


async def describe_models(manager: ModelManager, name: str, version: str | None) -> list[dict[str, Any]]:
    """Entries of ``name``: the default version, one version, or ``all`` (TorchServe's 404s otherwise)."""
    if version == "all":
        manager.registration(name, None)  # 404 for an unknown model
        regs = [manager.registered[name][v] for v in manager.gateway.catalog.versions(name)]
    else:
        regs = [manager.registration(name, version)]
    held = await _held_by_backend(manager, {b for r in regs for b in r.backends})
    return [_entry(manager, reg, held) for reg in regs]


async def _held_by_backend(
    manager: ModelManager, backends: set[str]
) -> dict[str, dict[tuple[str, str], HeldVersion] | str]:
    """What each backend holds now, or the error that prevented asking."""
    names = sorted(b for b in backends if b in manager.admins)

    async def ask(backend: str) -> dict[tuple[str, str], HeldVersion] | str:
        try:
            return await asyncio.wait_for(manager.admins[backend].held(), timeout=10.0)
        except BackendAdminError as exc:
            return exc.message
        except TimeoutError:
            return f"backend '{backend}' did not answer within 10s"

    answers = await asyncio.gather(*(ask(b) for b in names))
    return dict(zip(names, answers, strict=True))


def _entry(
    manager: ModelManager, reg: Registration, held: dict[str, dict[tuple[str, str], HeldVersion] | str]
) -> dict[str, Any]:
    workers: list[dict[str, Any]] = []
    queue: dict[str, Any] | None = None
    backends = []
    for backend in reg.backends:
        info = held.get(backend)
        version = info.get((reg.name, reg.version)) if isinstance(info, dict) else None
        if version is not None:
            workers += version.workers
            queue = version.detail.get("jobQueueStatus") or queue
        backends.append(_backend_entry(manager, reg, backend, info, version))
    pending = manager.gateway.catalog.inflight(reg.name, reg.version)
    capacity = int(queue["remainingCapacity"]) if queue else max(0, JOB_QUEUE_SIZE - pending)
    default = manager.gateway.catalog.default_version(reg.name) == reg.version
    return {
        "modelName": reg.name,
        "modelVersion": reg.version,
        "modelUrl": reg.url,
        "runtime": "python",
        "minWorkers": reg.min_workers,
        "maxWorkers": reg.max_workers,
        "batchSize": reg.batch_size,
        "maxBatchDelay": reg.max_batch_delay,
        "responseTimeout": reg.response_timeout,
        "startupTimeout": reg.store.archive.startup_timeout,
        "maxRetryTimeoutInSec": 300,
        "clientTimeoutInMills": 0,
        "parallelType": "",
        "parallelLevel": 0,
        "deviceType": "gpu" if any(w.get("gpu") for w in workers) else "cpu",
        "continuousBatching": False,
        "useJobTicket": False,
        "useVenv": False,
        "stateful": False,
        "sequenceMaxIdleMSec": 0,
        "sequenceTimeoutMSec": 0,
        "maxNumSequence": 0,
        "maxSequenceJobQueueSize": 0,
        "loadedAtStartup": reg.loaded_at_startup,
        "workers": workers,
        "jobQueueStatus": {"remainingCapacity": capacity, "pendingRequests": pending},
        "triserve": {
            "default": default,
            "labels": reg.mv.labels,
            "inputs": [spec.model_dump() for spec in reg.mv.inputs],
            "outputs": [spec.model_dump() for spec in reg.mv.outputs],
            "routing": _routing(manager, reg),
            "backends": backends,
        },
    }


def _routing(manager: ModelManager, reg: Registration) -> dict[str, Any]:
    if not manager.gateway.is_routed(reg.name):
        return {}
    route = manager.gateway.route(reg.name)
    return {
        "strategy": route.strategy,
        "weights": {ref.name: ref.weight for ref in route.backends},
        "batching": route.batching.model_dump(),
    }


def _backend_entry(
    manager: ModelManager,
    reg: Registration,
    backend: str,
    info: dict[tuple[str, str], HeldVersion] | str | None,
    version: HeldVersion | None,
) -> dict[str, Any]:
    cfg = manager.gateway.routing.backends[backend]
    state = manager.gateway.backends[backend]
    ewma = state.stats.ewma_s
    entry: dict[str, Any] = {
        "name": backend,
        "protocol": cfg.protocol,
        "url": cfg.url,
        **({"management_url": cfg.management_url} if cfg.management_url else {}),
        "state": reg.state.get(backend, "UNLOADED"),
        "held": version is not None,
        "workers": len(version.workers) if version else 0,
        "health": state.health_label(),
        "circuit": state.breaker.state.value,
        "outstanding": state.stats.outstanding,
        "latency_ewma_ms": None if ewma is None else round(ewma * 1e3, 3),
    }
    error = reg.errors.get(backend) or (info if isinstance(info, str) else None) or state.last_error
    if error and (reg.state.get(backend) != "READY" or not state.routable() or isinstance(info, str)):
        entry["last_error"] = error
    return entry
