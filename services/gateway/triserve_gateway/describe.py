"""``GET /models/{model}``: a TorchServe-management-style description of a routed model."""

from __future__ import annotations

import asyncio
from typing import Any

from triserve_common.errors import TriserveError
from triserve_gateway.gateway import Gateway


async def model_description(gateway: Gateway, model: str) -> dict[str, Any]:
    """``model``'s latest version, routing and live per-backend details (404 if not routed)."""
    route = gateway.route(model)
    timeout = gateway.routing.health.timeout_s
    names = [ref.name for ref in route.backends]
    weights = {ref.name: ref.weight for ref in route.backends}

    async def info(name: str) -> dict[str, Any]:
        try:
            return await gateway.backends[name].client.describe(model, timeout)
        except TriserveError as exc:
            return {"error": exc.message}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    infos = await asyncio.gather(*(info(n) for n in names))
    latest = gateway.catalog.get(model)
    return {
        "modelName": model,
        "modelVersion": latest.version,
        "versions": gateway.catalog.versions(model),
        "ready": gateway.model_ready(model),
        "strategy": route.strategy,
        "batching": route.batching.model_dump(),
        "labels": latest.labels,
        "backends": [
            _backend_detail(gateway, name, weights[name], detail)
            for name, detail in zip(names, infos, strict=True)
        ],
    }


def _backend_detail(gateway: Gateway, name: str, weight: float, detail: dict[str, Any]) -> dict[str, Any]:
    """One backend's entry: configuration, live state and what the backend says of the model."""
    state = gateway.backends[name]
    cfg = gateway.routing.backends[name]
    ewma = state.stats.ewma_s
    return {
        "name": name,
        "protocol": cfg.protocol,
        "url": cfg.url,
        "weight": weight,
        "health": state.health_label(),
        "circuit": state.breaker.state.value,
        "version": detail.get("version"),
        "engine": detail.get("engine"),
        "outstanding": state.stats.outstanding,
        "latency_ewma_ms": None if ewma is None else round(ewma * 1e3, 3),
        **({"last_error": state.last_error} if state.last_error and not state.routable() else {}),
        **{k: v for k, v in detail.items() if k not in ("version", "engine")},
    }
