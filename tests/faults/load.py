"""Load for the fault tests: Debian's ``wrk`` (C, LuaJIT) so the generator never starves the gateway.

One wrk thread per connection (``-tN -cN``): each thread's Lua state then sees its requests and
responses strictly alternate, so the script times every request itself (``clock_gettime`` through
LuaJIT's FFI) and keeps a latency histogram per outcome — ``ok`` (200 naming the right digit),
``503``, ``other`` (any other status or a wrong digit). ``pace_ms`` makes each connection pause
between requests (wrk's ``delay()`` hook): N connections then offer about N / (pace + latency)
requests a second without saturating the CPU with the generator's own retries.

Every request is the README's ``curl -T 7.png http://.../predictions/mnist``: PUT, a PNG body,
answered with the digit as text.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from triserve_cli.bench.wrk import result_line, wrk_binary

MARKER = "TRISERVE_FAULTS "

_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } triserve_ts;
int clock_gettime(int clk, triserve_ts *tp);
]]
local ts = ffi.new("triserve_ts")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local f = assert(io.open(%(body_path)s, "rb"))
local body = f:read("*a")
f:close()
local expected = %(expected)s
local pace = %(pace_ms)d
local headers = {["Content-Type"] = "image/png"%(headers)s}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  req = wrk.format("PUT", %(path)s, headers, body)
  started = 0
  h_ok = {}
  h_503 = {}
  h_other = {}
  statuses = {}
  bad_body = 0
  retry_after = 0
  sample = ""
end

function request()
  started = now_us()
  return req
end

if pace > 0 then
  function delay()
    return pace
  end
end

function response(status, hdrs, text)
  local tenths = math.floor((now_us() - started) / 100)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  local kind
  if status == 200 then
    if string.match(text, "^%%s*(%%d)%%s*$") == expected then
      kind = "ok"
    else
      kind = "other"
      bad_body = bad_body + 1
    end
  elseif status == 503 then
    kind = "503"
    for k, _ in pairs(hdrs) do
      if string.lower(k) == "retry-after" then retry_after = retry_after + 1 end
    end
  else
    kind = "other"
  end
  if kind == "other" and sample == "" then
    sample = key .. " " .. string.gsub(string.sub(text, 1, 160), "[^%%w .,:;_%%-%%+%%(%%)%%[%%]{}=/']", "?")
  end
  local h = h_other
  if kind == "ok" then h = h_ok elseif kind == "503" then h = h_503 end
  h[tenths] = (h[tenths] or 0) + 1
end

local function encode(tbl)
  local parts = {}
  for k, v in pairs(tbl) do
    table.insert(parts, string.format('"%%s":%%d', tostring(k), v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local merged = {ok = {}, ["503"] = {}, other = {}}
  local st = {}
  local bb, ra, first = 0, 0, ""
  for _, t in ipairs(threads) do
    -- wrk copies flat tables between Lua states (nested ones crash it)
    for kind, name in pairs({ok = "h_ok", ["503"] = "h_503", other = "h_other"}) do
      for k, v in pairs(t:get(name)) do merged[kind][k] = (merged[kind][k] or 0) + v end
    end
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
    bb = bb + t:get("bad_body")
    ra = ra + t:get("retry_after")
    if first == "" then first = t:get("sample") end
  end
  local e = summary.errors
  io.write("\n%(marker)s" .. string.format(
    '{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,' ..
    '"bad_body":%%d,"retry_after":%%d,"max_us":%%d,"statuses":%%s,"ok":%%s,"rejected":%%s,"other":%%s,"sample":"%%s"}',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, bb, ra, latency.max,
    encode(st), encode(merged.ok), encode(merged["503"]), encode(merged.other),
    string.gsub(first, '["\\]', "?")) .. "\n")
end
"""


def _lua(value: str) -> str:
    return json.dumps(value)


@dataclass
class Histogram:
    """Latencies in 0.1 ms buckets."""

    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile in ms (upper edge of its bucket); None when empty."""
        total = self.count
        if total == 0:
            return None
        rank = q / 100.0 * total
        seen = 0
        for tenth in sorted(self.buckets):
            seen += self.buckets[tenth]
            if seen >= rank:
                return (tenth + 1) / 10.0
        return (max(self.buckets) + 1) / 10.0

    def max_ms(self) -> float | None:
        return None if not self.buckets else (max(self.buckets) + 1) / 10.0

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "max_ms": self.max_ms(),
        }


@dataclass
class LoadResult:
    """What one wrk run saw."""

    requests: int
    duration_s: float
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    bad_body: int
    retry_after: int
    max_ms: float
    statuses: dict[str, int]
    ok: Histogram
    rejected: Histogram
    other: Histogram
    sample: str

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def failed(self) -> int:
        """Requests that did not get a right answer: socket errors, timeouts, non-200, wrong digits."""
        return self.socket_errors + self.rejected.count + self.other.count

    @property
    def rate(self) -> float:
        """Requests answered per second (any status)."""
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok_rate(self) -> float:
        return self.ok.count / self.duration_s if self.duration_s else 0.0

    def figures(self) -> dict[str, object]:
        """JSON-ready summary for reports."""
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 2),
            "rate_per_s": round(self.rate, 1),
            "ok_per_s": round(self.ok_rate, 1),
            "failed": self.failed,
            "socket_errors": self.socket_errors,
            "statuses": self.statuses,
            "ok": self.ok.summary(),
            "rejected": self.rejected.summary(),
            "other": self.other.summary(),
            "max_ms": self.max_ms,
            "sample": self.sample,
        }


def parse(stdout: str) -> LoadResult:
    raw = result_line(stdout, MARKER)

    def hist(key: str) -> Histogram:
        return Histogram({int(k): int(v) for k, v in raw[key].items()})

    return LoadResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        connect_errors=raw["connect"],
        read_errors=raw["read"],
        write_errors=raw["write"],
        timeouts=raw["timeout"],
        bad_body=raw["bad_body"],
        retry_after=raw["retry_after"],
        max_ms=raw["max_us"] / 1000.0,
        statuses={str(k): int(v) for k, v in raw["statuses"].items()},
        ok=hist("ok"),
        rejected=hist("rejected"),
        other=hist("other"),
        sample=raw["sample"],
    )


class Load:
    """A wrk run in the background: ``with Load(...) as load: ...; result = load.result()``."""

    def __init__(
        self,
        url: str,
        png: bytes,
        expected: int,
        workdir: Path,
        connections: int = 16,
        duration_s: float = 30.0,
        pace_ms: int = 0,
        timeout_s: int = 10,
        headers: dict[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        body = workdir / "digit.png"
        body.write_bytes(png)
        extra = "".join(f", [{_lua(k)}] = {_lua(v)}" for k, v in (headers or {}).items())
        script = workdir / f"load-{connections}c-{pace_ms}ms.lua"
        script.write_text(
            _LUA
            % {
                "body_path": _lua(str(body.resolve())),
                "expected": _lua(str(expected)),
                "pace_ms": pace_ms,
                "headers": extra,
                "path": _lua("/predictions/mnist"),
                "marker": MARKER,
            }
        )
        self.duration_s = duration_s
        self.cmd = [
            wrk_binary(), f"-t{connections}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s}s", "-s", str(script), url,
        ]
        self._proc: subprocess.Popen[str] | None = None
        self._out: tuple[str, str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Load:
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc = self._proc

        def collect() -> None:
            self._out = proc.communicate(timeout=self.duration_s + 60)

        self._thread = threading.Thread(target=collect, daemon=True)
        self._thread.start()
        return self

    def result(self) -> LoadResult:
        """Wait for wrk to finish and parse what it printed."""
        assert self._thread is not None and self._proc is not None
        self._thread.join(self.duration_s + 90)
        if self._out is None:
            self._proc.kill()
            raise RuntimeError("wrk did not finish")
        stdout, stderr = self._out
        if self._proc.returncode != 0:
            raise RuntimeError(f"wrk exited {self._proc.returncode}: {stderr.strip()}\n{stdout[-1000:]}")
        return parse(stdout)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
