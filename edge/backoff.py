"""Retry delays with full jitter; the random source is passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5
    cap: float = 60.0

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = first retry).

        Full jitter (uniform in [0, min(cap, base * 2**attempt)]) keeps a
        thousand stores that lost the cloud together from coming back in step.
        """
        if attempt <= 0:
            return 0.0
        ceiling = min(self.cap, self.base * float(2 ** min(attempt, 32)))
        return float(rand() * ceiling)
