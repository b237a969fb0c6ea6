"""A fake monotonic clock for the code that takes `clock=time.monotonic` (breaker, pool, memory store)."""

from __future__ import annotations


class FakeClock:
    """Moves only when told, so tests let cooldowns, idle limits and TTLs pass without sleeping."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
