"""Light, steady client load on the gateway from a few threads, counting every failed request."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

import httpx


@dataclass
class Outcome:
    """One finished request: when (monotonic), its status (0: no answer) and the backend that served it."""

    at: float
    status: int
    backend: str
    error: str = ""


@dataclass
class Load:
    """``workers`` threads each sending ``body`` to ``url`` (PUT), pausing ``pause_s`` between requests."""

    url: str
    body: bytes
    workers: int = 4
    pause_s: float = 0.05
    timeout_s: float = 15.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _worker(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                try:
                    resp = client.put(self.url, content=self.body)
                    outcome = Outcome(time.monotonic(), resp.status_code, resp.headers.get("x-backend", ""),
                                      "" if resp.status_code == 200 else resp.text[:200])
                except httpx.HTTPError as exc:
                    outcome = Outcome(time.monotonic(), 0, "", f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(self.pause_s)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.snapshot() if o.status != 200]

    def backends_since(self, since: float) -> Counter[str]:
        return Counter(o.backend for o in self.snapshot() if o.at >= since and o.status == 200)
