"""Shadow traffic: mirror a share of a route's requests to a candidate and measure parity live.

HTTP-free. A route's ``shadow`` config (:class:`~triserve_gateway.config.ShadowConfig`) names
candidates — another backend, another version of the model, or both — each with the fraction of
successful requests mirrored to it. The inference service offers every routed result
(:meth:`ShadowTraffic.offer`); a sampled one becomes a :class:`ShadowJob` holding the model input
and the primary's output rows. Inside :func:`holding` (the HTTP layer wraps each request in it) jobs
wait until the client's answer is sent, then :meth:`ShadowTraffic.release` hands them to their
candidate's lane (one per model, candidate backend and version, so a slow candidate only costs its own
shadows): at most ``max_concurrent`` run, ``max_queue`` wait, any further one is dropped and counted —
shadows are dropped first under load, never queued without bound, never delay or change an answer.

A shadow calls the candidate's backend client directly (no batching, routing or circuit breaker:
its failures never eject a backend) under ``timeout_s`` and compares per row: top-1 agreement and
max |logit diff| (:func:`compare`), exported per primary/candidate pair
(:class:`~triserve_gateway.metrics.ShadowMetrics`). Disagreements are logged with the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from triserve_common.errors import TriserveError
from triserve_gateway.config import ShadowCandidate, ShadowConfig
from triserve_gateway.gateway import BackendState, Gateway, RoutedResult, Target
from triserve_gateway.metrics import ShadowMetrics
from triserve_gateway.models import ModelVersion

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Pair:
    """Who answered (primary) and who is mirrored to (candidate): backend and model version."""

    model: str
    primary: str
    primary_version: str
    candidate: str
    candidate_version: str

    def labels(self) -> tuple[str, str, str, str, str]:
        """Label values in :data:`~triserve_gateway.metrics.PAIR_LABELS` order."""
        return (self.model, self.primary, self.primary_version, self.candidate, self.candidate_version)

    def __str__(self) -> str:
        return f"{self.primary} v{self.primary_version} vs {self.candidate} v{self.candidate_version}"


@dataclass(frozen=True)
class Parity:
    """How a candidate's output compares with the primary's, row by row."""

    rows: int
    agreed: int
    """Rows with the same top-1 label."""
    max_abs_diff: float
    """Largest |logit difference| over every row and class (inf when either side is not finite)."""
    disagreements: list[tuple[int, str, str]]
    """(row, primary label, candidate label) of every row whose top-1 differs."""


def compare(
    primary: Array, candidate: Array, primary_labels: Sequence[str], candidate_labels: Sequence[str]
) -> Parity:
    """Top-1 agreement and max |logit diff| of two ``[rows, classes]`` outputs (ValueError when
    their shapes differ)."""
    if primary.shape != candidate.shape or primary.ndim != 2:
        raise ValueError(f"candidate output shape {list(candidate.shape)} != primary's {list(primary.shape)}")
    p_top = [primary_labels[int(i)] for i in primary.argmax(axis=1)]
    c_top = [candidate_labels[int(i)] for i in candidate.argmax(axis=1)]
    disagreements = [(row, p, c) for row, (p, c) in enumerate(zip(p_top, c_top, strict=True)) if p != c]
    diff = float(np.max(np.abs(primary.astype(np.float64) - candidate))) if primary.size else 0.0
    return Parity(len(p_top), len(p_top) - len(disagreements), diff if math.isfinite(diff) else math.inf,
                  disagreements)


@dataclass
class ShadowJob:
    """One mirrored request: the model input, the primary's answer and where to send it."""

    pair: Pair
    request_id: str | None
    x: Array
    primary_value: Array
    primary_mv: ModelVersion
    candidate_mv: ModelVersion
    backend: BackendState
    version: str | None
    """The version asked of the candidate backend (None = its default, as the primary was asked)."""
    limits: ShadowConfig


LaneKey = tuple[str, str, str]
"""(model, candidate backend, candidate version)."""


@dataclass
class _Lane:
    """One candidate's shadows: those running and those waiting for a slot."""

    key: LaneKey
    running: int = 0
    waiting: deque[ShadowJob] = field(default_factory=deque)


_HELD: ContextVar[list[ShadowJob] | None] = ContextVar("triserve_shadow_held", default=None)


@contextlib.contextmanager
def holding() -> Iterator[list[ShadowJob]]:
    """Hold the shadows offered inside this block (one request's) instead of starting them: the
    caller releases them (:meth:`ShadowTraffic.release`) once the answer is sent."""
    held: list[ShadowJob] = []
    token = _HELD.set(held)
    try:
        yield held
    finally:
        _HELD.reset(token)


class ShadowTraffic:
    """Samples, holds, bounds, runs and scores the shadows of every route with a ``shadow`` config."""

    def __init__(self, gateway: Gateway, metrics: ShadowMetrics, rng: random.Random | None = None) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._lanes: dict[LaneKey, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_diff: dict[Pair, float] = {}
        self._closed = False

    # ------------------------------------------------------------------ intake (hot path)

    def offer(self, target: Target, x: Array, result: RoutedResult, request_id: str | None) -> None:
        """A routed result: sample it for each candidate; hold the jobs (see :func:`holding`) or,
        outside a request, start them now."""
        cfg = target.route.config.shadow
        if cfg is None or self._closed:
            return
        jobs = [
            job for cand in cfg.candidates
            if self._rng.random() < cand.fraction
            and (job := self._job(target, x, result, request_id, cand, cfg)) is not None
        ]  # fmt: skip
        if not jobs:
            return
        held = _HELD.get()
        if held is None:
            self.release(jobs)
        else:
            held.extend(jobs)

    def _job(
        self, target: Target, x: Array, result: RoutedResult, request_id: str | None,
        cand: ShadowCandidate, cfg: ShadowConfig,
    ) -> ShadowJob | None:
        """The job mirroring ``result`` to ``cand``; None when the candidate is the primary itself."""
        backend = cand.backend or result.backend
        version = cand.version or result.model_version
        if backend == result.backend and version == result.model_version:
            return None
        pair = Pair(target.model, result.backend, result.model_version, backend, version)
        state = self.gateway.backends.get(backend)
        try:
            candidate_mv = self.gateway.catalog.get(target.model, cand.version) if cand.version else target.mv
        except TriserveError as exc:
            self._failed(pair, request_id, exc.message)
            return None
        if state is None or not _same_input(target.mv, candidate_mv):
            why = f"backend '{backend}' is not configured" if state is None else "its input differs"
            self._failed(pair, request_id, why)
            return None
        # Placement is known only for the backends of the model's route; a candidate outside it (a
        # backend kept for shadowing alone) is tried, and a version it lacks counts as a failed shadow.
        placed = self.gateway.placement.get((target.model, candidate_mv.version))
        if placed is not None and backend in target.route.by_name and backend not in placed:
            self._failed(pair, request_id, f"backend '{backend}' does not hold version {version}")
            return None
        asked = cand.version if cand.version else target.version
        return ShadowJob(pair, request_id, x, result.value, target.mv, candidate_mv, state, asked, cfg)

    def release(self, jobs: list[ShadowJob]) -> None:
        """Start, queue or drop (when the lane is full or the candidate unhealthy) each job."""
        for job in jobs:
            key = (job.pair.model, job.pair.candidate, job.pair.candidate_version)
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(key)
            if self._closed or not job.backend.healthy:
                self._count(job.pair, "dropped")
            elif lane.running < job.limits.max_concurrent:
                self._start(lane, job)
            elif len(lane.waiting) < job.limits.max_queue:
                lane.waiting.append(job)
            else:
                self._count(job.pair, "dropped")
            self._publish(lane)
        jobs.clear()

    # ------------------------------------------------------------------ running

    def _start(self, lane: _Lane, job: ShadowJob) -> None:
        lane.running += 1
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, lane))

    def _finished(self, task: asyncio.Task[None], lane: _Lane) -> None:
        self._tasks.discard(task)
        lane.running -= 1
        if lane.waiting and not self._closed:
            self._start(lane, lane.waiting.popleft())
        self._publish(lane)

    async def _run(self, job: ShadowJob) -> None:
        mv = job.candidate_mv
        try:
            async with asyncio.timeout(job.limits.timeout_s):
                y = await job.backend.client.infer(
                    mv.name, job.version, job.x, job.request_id, mv.input.name, mv.output.name
                )
            parity = compare(job.primary_value, np.asarray(y), _labels(job.primary_mv, job.primary_value),
                             _labels(mv, y))
        except TimeoutError:
            self._failed(job.pair, job.request_id, f"no answer within {job.limits.timeout_s:g} s")
            return
        except TriserveError as exc:
            self._failed(job.pair, job.request_id, exc.message)
            return
        except Exception as exc:  # a candidate's failure must never escape into the event loop
            self._failed(job.pair, job.request_id, f"{type(exc).__name__}: {exc}")
            return
        self._record(job, parity)

    def _record(self, job: ShadowJob, parity: Parity) -> None:
        pair, labels, m = job.pair, job.pair.labels(), self.metrics
        self._count(pair, "compared")
        m.compared_rows.labels(*labels).inc(parity.rows)
        m.agreed_rows.labels(*labels).inc(parity.agreed)
        m.logit_diff.labels(*labels).observe(parity.max_abs_diff)
        if parity.max_abs_diff > self._max_diff.get(pair, -1.0):
            self._max_diff[pair] = parity.max_abs_diff
            m.max_logit_diff.labels(*labels).set(parity.max_abs_diff)
        if parity.disagreements:
            row, p, c = parity.disagreements[0]
            log.warning(
                "shadow disagreement: request %s model %s: %s: top-1 differs on %d of %d rows "
                "(row %d: %s vs %s); max |logit diff| %.4g",
                job.request_id, pair.model, pair, len(parity.disagreements), parity.rows, row, p, c,
                parity.max_abs_diff,
            )

    def _failed(self, pair: Pair, request_id: str | None, why: str) -> None:
        self._count(pair, "failed")
        log.info("shadow of request %s (%s %s) failed: %s", request_id, pair.model, pair, why)

    def _count(self, pair: Pair, outcome: str) -> None:
        self.metrics.shadows.labels(*pair.labels(), outcome).inc()

    def _publish(self, lane: _Lane) -> None:
        self.metrics.pending.labels(*lane.key).set(lane.running + len(lane.waiting))

    def pending(self, model: str) -> int:
        """Shadows of ``model`` running or waiting, every candidate's."""
        return sum(lane.running + len(lane.waiting) for key, lane in self._lanes.items() if key[0] == model)

    async def close(self) -> None:
        """Drop waiting shadows and cancel running ones (shutdown)."""
        self._closed = True
        for lane in self._lanes.values():
            for job in lane.waiting:
                self._count(job.pair, "dropped")
            lane.waiting.clear()
            self._publish(lane)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _same_input(a: ModelVersion, b: ModelVersion) -> bool:
    """Whether ``b`` takes the tensor preprocessed for ``a`` as it is."""
    return a.input == b.input and a.preprocessor.spec == b.preprocessor.spec


def _labels(mv: ModelVersion, value: Any) -> list[str]:
    return mv.labels or [str(i) for i in range(int(np.shape(value)[-1]))]
