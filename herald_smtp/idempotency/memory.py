"""In-process idempotency store: a dict under a lock, with expiry.

Same semantics as the Redis store, for one process only (gunicorn then runs
a single worker with threads). Used when REDIS_URL is empty.
"""

from __future__ import annotations

import threading
import time

from . import Claim, Record, new_reservation

# Expired entries are dropped on access and by a sweep every this many writes,
# so memory stays bounded by the keys of the last TTL.
_SWEEP_EVERY = 1000


class MemoryStore:
    name = "memory"

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, float]] = {}  # key -> (value, expires_at)
        self._writes = 0

    def reserve(self, key: str, fingerprint: str, hold_seconds: float) -> Claim:
        with self._lock:
            value = self._live(key)
            if value is not None:
                return Claim(key, existing=Record.decode(value))
            reservation = new_reservation(fingerprint)
            self._put(key, reservation, hold_seconds)
            return Claim(key, reservation=reservation)

    def finish(self, claim: Claim, record: Record, ttl_seconds: int) -> bool:
        with self._lock:
            if self._live(claim.key) != claim.reservation:
                return False
            self._put(claim.key, record.encode(), ttl_seconds)
            return True

    def release(self, claim: Claim) -> bool:
        with self._lock:
            if self._live(claim.key) != claim.reservation:
                return False
            del self._entries[claim.key]
            return True

    def get(self, key: str) -> Record | None:
        with self._lock:
            value = self._live(key)
        return None if value is None else Record.decode(value)

    def ping(self) -> None:
        return None

    def _live(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: str, seconds: float) -> None:
        self._entries[key] = (value, self._clock() + seconds)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            now = self._clock()
            for k in [k for k, (_, expires) in self._entries.items() if expires <= now]:
                del self._entries[k]
