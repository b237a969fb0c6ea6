"""Idempotency records: one storage interface, a Redis and an in-process implementation.

A key moves through two states: *reserved* (in flight, owned by the holder of
a random token, expiring after a hold time longer than the SMTP budget) and
*done* (the final status and body, kept for IDEMPOTENCY_TTL_SECONDS). Only
the token's holder may finish or release a reservation, so a reservation
that expired and was taken over cannot be overwritten by its old owner.
`open_store` picks the implementation from REDIS_URL, like the `limits` library.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Protocol

from ..config import Settings


class StoreUnavailable(Exception):
    """The store could not be reached; the message names it, never its password."""


@dataclass(frozen=True)
class Record:
    fingerprint: str
    status: int | None = None  # None while the first request is in flight
    body: dict | None = None

    @property
    def done(self) -> bool:
        return self.status is not None

    def encode(self, token: str = "") -> str:
        data = {"fp": self.fingerprint}
        if self.done:
            data.update(status=self.status, body=self.body)
        else:
            data["token"] = token
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> "Record":
        data = json.loads(raw)
        return cls(data["fp"], data.get("status"), data.get("body"))


@dataclass(frozen=True)
class Claim:
    """The answer to reserve(): either we own the key or `existing` is what is there.

    `reservation` is the exact value we stored, random token included; the
    stores compare against it before finishing or releasing.
    """

    key: str
    reservation: str | None = None
    existing: Record | None = None

    @property
    def owned(self) -> bool:
        return self.reservation is not None


def new_reservation(fingerprint: str) -> str:
    return Record(fingerprint).encode(token=secrets.token_hex(16))


class Store(Protocol):
    name: str

    def reserve(self, key: str, fingerprint: str, hold_seconds: float) -> Claim:
        """Atomically reserve `key` if absent; else return what is there."""

    def finish(self, claim: Claim, record: Record, ttl_seconds: int) -> bool:
        """Replace our reservation with the final record; False if it is no longer ours."""

    def release(self, claim: Claim) -> bool:
        """Delete our reservation so a retry can send; False if it is no longer ours."""

    def get(self, key: str) -> Record | None:
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot answer."""


def open_store(settings: Settings) -> Store:
    if settings.redis_url:
        from .redis import RedisStore

        return RedisStore.from_url(settings.redis_url, settings.redis_key_prefix)
    from .memory import MemoryStore

    return MemoryStore()
