"""Engine fallback: try candidate engines best first and keep the first that initialises.

Runtimes (ONNX Runtime, Paddle Inference) build their engine through :func:`first_working`: a GPU
engine that raises while it is created (no device, driver too old, TensorRT missing) is logged with
its reason and the next candidate is tried, instead of the service exiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from triserve_common.errors import TriserveError

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")


@dataclass(frozen=True)
class Fallback:
    """A candidate engine that failed to initialise, and why."""

    engine: str
    reason: str

    def describe(self) -> str:
        return f"{self.engine}: {self.reason}"


@dataclass(frozen=True)
class Chosen(Generic[C, R]):
    """The first candidate that worked, what it built, and the candidates skipped before it."""

    candidate: C
    result: R
    fallbacks: list[Fallback]


def first_working(
    candidates: Sequence[C],
    build: Callable[[C], R],
    name: Callable[[C], str],
    what: str = "engine",
) -> Chosen[C, R]:
    """``build`` each candidate in order until one returns; raise :class:`TriserveError` if none does.

    Every failure is logged as a warning naming the candidate, the exception and the next candidate.
    """
    if not candidates:
        raise TriserveError(f"no {what} to try")
    fallbacks: list[Fallback] = []
    for index, candidate in enumerate(candidates):
        try:
            result = build(candidate)
        except Exception as exc:  # engines raise assorted C++/Python errors
            reason = f"{type(exc).__name__}: {exc}".strip()
            fallbacks.append(Fallback(name(candidate), reason))
            following = candidates[index + 1] if index + 1 < len(candidates) else None
            log.warning(
                "%s %s failed to initialise (%s); %s",
                what,
                name(candidate),
                reason,
                f"falling back to {name(following)}" if following is not None else "no fallback left",
            )
            continue
        if fallbacks:
            log.warning(
                "%s %s runs after %d fallback(s): %s",
                what,
                name(candidate),
                len(fallbacks),
                "; ".join(f.describe() for f in fallbacks),
            )
        return Chosen(candidate, result, fallbacks)
    raise TriserveError(
        f"no {what} could be initialised: " + "; ".join(f.describe() for f in fallbacks)
    )
