"""The idempotency store interface: what every backend offers, and the values it trades in.

A key moves through two states: *reserved* (in flight, owned by the holder of
the claim's token, expiring after a hold time longer than the send can take)
and *done* (the final status and body, kept for IDEMPOTENCY_TTL_SECONDS).
Only the token's holder may finish or release a reservation, so an owner whose
reservation expired and was taken over cannot overwrite the newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreUnavailable(Exception):
    """The store could not be reached; the message names it, never its password."""


@dataclass(frozen=True)
class Record:
    """What a key holds: the payload's fingerprint and, once done, the answer to replay."""

    fingerprint: str
    status: int | None = None  # None while the first request is in flight
    body: dict | None = None

    @property
    def done(self) -> bool:
        return self.status is not None


@dataclass(frozen=True)
class Claim:
    """The answer to reserve(): either we own the key (`token`) or `existing` is what is there.

    The token is opaque to callers; each store keeps in it what it needs to
    recognise its own reservation (Redis: the exact value it wrote).
    """

    key: str
    token: object | None = None
    existing: Record | None = None

    @property
    def owned(self) -> bool:
        return self.token is not None


class Store(Protocol):
    name: str

    def reserve(self, key: str, fingerprint: str, hold_seconds: float) -> Claim:
        """Atomically reserve `key` if absent; else return what is there."""

    def finish(self, claim: Claim, record: Record, ttl_seconds: int) -> bool:
        """Replace our reservation with the final record; False if it is no longer ours."""

    def release(self, claim: Claim) -> bool:
        """Delete our reservation so a retry can send; False if it is no longer ours."""

    def get(self, key: str) -> Record | None:
        """What `key` holds now, or None."""

    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot answer."""
