"""The idempotency store interface: what every backend offers, and the values it trades in.

A key moves through three states:
  reserved    in flight, owned by the holder of the claim's token, expiring
              after a hold time longer than the send can take;
  committing  the owner is about to send the final dot: kept for
              IDEMPOTENCY_TTL_SECONDS, with the owner's hold deadline, so that
              a crash from here on can never lead to a second mail;
  done        the final status and body, kept for IDEMPOTENCY_TTL_SECONDS.
Only the token's holder may commit, finish or release, so an owner whose
reservation expired and was taken over cannot overwrite the newer one.

The same store keeps each accepted mail's status record (sending/status.py),
keyed by its message_id: finish() writes it in the final record's round trip.
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
    committing: bool = False
    hold_until: float | None = None  # committing: when the owner's send must be over (time.time())

    @property
    def done(self) -> bool:
        return self.status is not None

    def abandoned(self, now: float) -> bool:
        """Committing past the owner's hold: it died or could not record; the outcome is unknown."""
        return self.committing and not self.done and self.hold_until is not None and now > self.hold_until


@dataclass(frozen=True)
class Claim:
    """The answer to reserve(): either we own the key (`token`) or `existing` is what is there.

    The token is opaque to callers; each store keeps in it what it needs to
    recognise its own reservation (Redis: the exact value it wrote).
    """

    key: str
    token: object | None = None
    existing: Record | None = None
    suppression: dict | None = None  # the recipient's suppression entry, when reserve() was asked to look


    @property
    def owned(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class StatusWrite:
    """A message's status record (JSON-able) to keep for `ttl_seconds`."""

    message_id: str
    record: dict
    ttl_seconds: int


class Store(Protocol):
    name: str

    def reserve(self, key: str, fingerprint: str, hold_seconds: float, suppression: str | None = None) -> Claim:
        """Atomically reserve `key` if absent; else return what is there. With `suppression` (a suppression
        key), the recipient's suppression entry comes back in the same round trip."""

    def commit(self, claim: Claim, record: Record, ttl_seconds: int) -> Claim | None:
        """Replace our reservation with the committing `record`; the claim to go on with, or None if
        the reservation is no longer ours."""

    def finish(self, claim: Claim, record: Record, ttl_seconds: int, status: StatusWrite | None = None) -> bool:
        """Replace our reservation with the final record (and write `status` in the same round trip); False if
        the key is no longer ours (the status is written all the same: the mail was accepted)."""

    def release(self, claim: Claim) -> bool:
        """Delete our reservation so a retry can send; False if it is no longer ours."""

    def get(self, key: str) -> Record | None:
        """What `key` holds now, or None."""

    def put_status(self, status: StatusWrite) -> None:
        """Keep a message's status record (a send without an idempotency key)."""

    def get_status(self, message_id: str) -> dict | None:
        """The message's status record, or None when unknown or expired."""

    def add_event(self, message_id: str, event: dict) -> str:
        """Append `event` to the message's status record, keeping its expiry, unless an event of the same
        `notification_id` is there: "added", "duplicate", or "unknown" (no record: not ours, or expired)."""

    def get_suppression(self, key: str) -> dict | None:
        """The suppression entry under `key` (sending/suppression.py), or None."""

    def suppress(self, key: str, entry: dict, ttl_seconds: int) -> None:
        """Suppress a recipient for `ttl_seconds`."""

    def unsuppress(self, key: str) -> bool:
        """Lift a suppression; False when there was none."""

    def suppressions(self, limit: int) -> list[dict]:
        """Up to `limit` suppression entries (for `herald-smtp suppression list`)."""

    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot answer."""
