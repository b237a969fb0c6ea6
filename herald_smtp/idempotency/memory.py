"""In-process idempotency store: a dict under a lock, with expiry.

Same semantics as the Redis store, for one process only (gunicorn then runs
a single worker with threads). Used when REDIS_URL is empty or memory://.
Entries hold native values; the claim's token is a fresh object compared by
identity.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .base import Claim, Record, StatusWrite

# Expired entries are dropped on access and by a sweep every this many writes,
# so memory stays bounded by the keys of the last TTL.
_SWEEP_EVERY = 1000
_MESSAGE, _SUPPRESSION = "message:", "suppression:"


@dataclass(frozen=True)
class _Entry:
    record: Record
    token: object | None  # the owner's token while reserved or committing, None once done
    expires_at: float


class MemoryStore:
    name = "memory"

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        # Message statuses ("message:" + message_id) and suppressions ("suppression:" + key): (value, expires_at).
        self._records: dict[str, tuple[dict, float]] = {}
        self._writes = 0

    def reserve(self, key: str, fingerprint: str, hold_seconds: float, suppression: str | None = None) -> Claim:
        with self._lock:
            suppressed = self._get_record(_SUPPRESSION + suppression) if suppression else None
            entry = self._live(key)
            if entry is not None:
                return Claim(key, existing=entry.record, suppression=suppressed)
            token = object()
            self._put(key, _Entry(Record(fingerprint), token, self._clock() + hold_seconds))
            return Claim(key, token=token, suppression=suppressed)

    def commit(self, claim: Claim, record: Record, ttl_seconds: int) -> Claim | None:
        with self._lock:
            if not self._owns(claim):
                return None
            self._put(claim.key, _Entry(record, claim.token, self._clock() + ttl_seconds))
            return claim

    def finish(self, claim: Claim, record: Record, ttl_seconds: int, status: StatusWrite | None = None) -> bool:
        with self._lock:
            if status is not None:
                self._put_record(_MESSAGE + status.message_id, status.record, status.ttl_seconds)
            if not self._owns(claim):
                return False
            self._put(claim.key, _Entry(record, None, self._clock() + ttl_seconds))
            return True

    def release(self, claim: Claim) -> bool:
        with self._lock:
            if not self._owns(claim):
                return False
            del self._entries[claim.key]
            return True

    def get(self, key: str) -> Record | None:
        with self._lock:
            entry = self._live(key)
        return None if entry is None else entry.record

    def put_status(self, status: StatusWrite) -> None:
        with self._lock:
            self._put_record(_MESSAGE + status.message_id, status.record, status.ttl_seconds)

    def get_status(self, message_id: str) -> dict | None:
        with self._lock:
            return self._get_record(_MESSAGE + message_id)

    def add_event(self, message_id: str, event: dict) -> str:
        with self._lock:
            record = self._get_record(_MESSAGE + message_id)
            if record is None:
                return "unknown"
            if any(seen.get("notification_id") == event.get("notification_id") for seen in record["events"]):
                return "duplicate"
            expires_at = self._records[_MESSAGE + message_id][1]
            self._records[_MESSAGE + message_id] = ({**record, "events": [*record["events"], event]}, expires_at)
            return "added"

    def get_suppression(self, key: str) -> dict | None:
        with self._lock:
            return self._get_record(_SUPPRESSION + key)

    def suppress(self, key: str, entry: dict, ttl_seconds: int) -> None:
        with self._lock:
            self._put_record(_SUPPRESSION + key, entry, ttl_seconds)

    def unsuppress(self, key: str) -> bool:
        with self._lock:
            if self._get_record(_SUPPRESSION + key) is None:
                return False
            del self._records[_SUPPRESSION + key]
            return True

    def suppressions(self, limit: int) -> list[dict]:
        with self._lock:
            keys = [k for k in self._records if k.startswith(_SUPPRESSION)]
            found = (self._get_record(k) for k in keys)
            return [entry for entry in found if entry is not None][:limit]

    def ping(self) -> None:
        return None

    def _put_record(self, key: str, value: dict, ttl_seconds: int) -> None:
        self._records[key] = (value, self._clock() + ttl_seconds)
        self._wrote()

    def _get_record(self, key: str) -> dict | None:
        found = self._records.get(key)
        if found is None or found[1] <= self._clock():
            self._records.pop(key, None)
            return None
        return found[0]

    def _owns(self, claim: Claim) -> bool:
        entry = self._live(claim.key)
        return entry is not None and entry.token is claim.token

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        return entry

    def _put(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._wrote()

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            now = self._clock()
            for k in [k for k, e in self._entries.items() if e.expires_at <= now]:
                del self._entries[k]
            for k in [k for k, (_, expires_at) in self._records.items() if expires_at <= now]:
                del self._records[k]
