"""``Server-Timing`` header of an inference response (durations in milliseconds)."""

from __future__ import annotations


def server_timing(preprocess_s: float, queue_s: float, backend_s: float, total_s: float) -> str:
    """``preprocess;dur=…, queue;dur=…, backend;dur=…, total;dur=…`` (ms, 3 decimals)."""
    return (
        f"preprocess;dur={preprocess_s * 1e3:.3f}, queue;dur={queue_s * 1e3:.3f}, "
        f"backend;dur={backend_s * 1e3:.3f}, total;dur={total_s * 1e3:.3f}"
    )
