"""Side instruments of the fault tests: a latency prober, a /proc sampler, slow-loris sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx

from tests.faults.stack import fd_count, rss_kib


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Prober:
    """GETs ``url`` every ``period_s`` in a thread; keeps each latency (ms) and status."""

    url: str
    period_s: float = 0.05
    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    status = http.get(self.url).status_code
                except httpx.HTTPError:
                    status = 0
                self.latencies_ms.append((time.perf_counter() - start) * 1e3)
                self.statuses.append(status)
                self._stop.wait(self.period_s)

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def summary(self) -> dict[str, object]:
        return {
            "count": len(self.latencies_ms),
            "p50_ms": _round(percentile(self.latencies_ms, 50)),
            "p99_ms": _round(percentile(self.latencies_ms, 99)),
            "max_ms": _round(max(self.latencies_ms, default=None)),
            "non_200": sum(1 for s in self.statuses if s != 200),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class ProcSampler:
    """Samples a process's RSS (KiB) and open fds every ``period_s`` in a thread."""

    pid: int
    period_s: float = 0.5
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> tuple[float, int, int]:
        point = (time.monotonic(), rss_kib(self.pid), fd_count(self.pid))
        self.samples.append(point)
        return point

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def __enter__(self) -> ProcSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.sample()

    def max_rss_kib(self) -> int:
        return max(s[1] for s in self.samples)


@dataclass
class SlowLoris:
    """``count`` sockets that never finish a request: half trickle header lines, half trickle a
    body after complete headers, one chunk every ``every_s``; each reconnects when the server
    closes it. Counts what the server did to them (closed during headers, 408 during the body)."""

    host: str
    port: int
    count: int = 500
    every_s: float = 2.0
    closed_in_headers: int = 0
    answered_in_body: dict[str, int] = field(default_factory=dict)
    open_now: int = 0
    peak_open: int = 0
    connect_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    async def _one(self, body: bool, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(self.every_s)
                continue
            self.open_now += 1
            self.peak_open = max(self.peak_open, self.open_now)
            try:
                head = b"PUT /predictions/mnist HTTP/1.1\r\nHost: loris\r\nContent-Type: image/png\r\n"
                if body:
                    head += b"Content-Length: 100000\r\n\r\n"
                writer.write(head)
                while not stop.is_set():
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(200), self.every_s)
                    except TimeoutError:
                        writer.write(b"a" if body else b"X-Slow: 1\r\n")
                        continue
                    if not data:
                        self.closed_in_headers += 0 if body else 1
                    else:
                        status = data.split(b" ", 2)[1].decode(errors="replace") if b" " in data else "?"
                        self.answered_in_body[status] = self.answered_in_body.get(status, 0) + 1
                    break
            except OSError:
                pass
            finally:
                self.open_now -= 1
                writer.close()

    async def _main(self) -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self._one(i % 2 == 1, stop)) for i in range(self.count)]
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> SlowLoris:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def figures(self) -> dict[str, object]:
        return {
            "sockets": self.count,
            "peak_open": self.peak_open,
            "closed_during_headers": self.closed_in_headers,
            "answered_during_body": self.answered_in_body,
            "connect_errors": self.connect_errors,
        }
