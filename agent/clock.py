"""Time as an object passed in, so that scheduling is tested without waiting.

Deadlines are wall-clock (``now()``, seconds since the epoch): a monotonic clock stops while the
machine sleeps, and a token's ``expiresAt`` is wall-clock too.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for short bounded waits only)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to; ``jump`` models a suspend or a clock change."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += max(seconds, 0.0)

    def jump(self, seconds: float) -> None:
        """Move wall-clock time only, as after a suspend (monotonic stood still)."""
        self._now += seconds
