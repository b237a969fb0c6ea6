"""The idempotency steps around one send: claim the key before it, record the outcome after it.

    claim(key, fingerprint, hold) -> Owned     we hold the reservation: send
                                     Replay    a finished record with this payload: answer it again
                                     Refused   another payload (conflict), still in flight after the
                                               wait, or the store failed and we must not send
                                     Unguarded the store is down and IDEMPOTENCY_FAILURE_MODE=open:
                                               send without idempotency
    record(owned, result, answer)    keep the answer for the TTL, or release the key (outcomes.py
                                     says which)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..config import Settings
from ..idempotency.base import Claim, Record, Store, StoreUnavailable
from ..metrics import Metrics
from ..outcomes import Answer, Outcome, Result

log = logging.getLogger("herald_smtp.send")

# How often a duplicate polls for the first request's result.
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Owned:
    claim: Claim
    fingerprint: str


@dataclass(frozen=True)
class Replay:
    answer: Answer


@dataclass(frozen=True)
class Refused:
    result: Result


@dataclass(frozen=True)
class Unguarded:
    pass


Turn = Owned | Replay | Refused | Unguarded


class KeyGuard:
    def __init__(self, settings: Settings, store: Store, metrics: Metrics):
        self.settings = settings
        self.store = store
        self.metrics = metrics

    def claim(self, key: str, fingerprint: str, hold_seconds: float) -> Turn:
        deadline = time.monotonic() + self.settings.idempotency_wait_seconds
        while True:
            try:
                claim = self.store.reserve(key, fingerprint, hold_seconds)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("reserve").inc()
                return self._store_down(exc)
            if claim.owned:
                return Owned(claim, fingerprint)
            try:
                record = self._await_done(key, claim.existing, fingerprint, deadline)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("wait").inc()
                # Another request holds this key and may be sending right now: sending too
                # could duplicate the mail, whatever the failure mode says.
                log.error("idempotency store failed while waiting for a duplicate in flight", extra={"cause": str(exc)})
                return Refused(Result(Outcome.STORE_UNAVAILABLE, f"{exc}; a request with this key was in flight, "
                                                                 "not sending a duplicate"))
            if record is not None:
                return self._decide(key, record, fingerprint)
            # The first request released the key (transient failure) or it expired: our turn.

    def record(self, owned: Owned, result: Result, answer: Answer | None) -> None:
        claim = owned.claim
        try:
            if result.outcome.keep:
                record = Record(owned.fingerprint, answer.status, answer.body)
                stored = self.store.finish(claim, record, self.settings.idempotency_ttl_seconds)
            else:
                stored = self.store.release(claim)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("record").inc()
            # The mail's fate is decided and the caller gets it; but until the reservation
            # expires a retry gets 409, and after that it would send again.
            log.error("could not record the send outcome in the idempotency store",
                      extra={"cause": str(exc), "idempotency_key": claim.key, "outcome": result.outcome.value})
            return
        if not stored:
            log.error("idempotency reservation expired before the send finished; outcome not recorded",
                      extra={"idempotency_key": claim.key, "outcome": result.outcome.value})

    def _decide(self, key: str, record: Record, fingerprint: str) -> Turn:
        """What a duplicate does with the record it found once the wait is over."""
        if record.fingerprint != fingerprint:
            self.metrics.conflicts.labels("payload_mismatch").inc()
            return Refused(Result(Outcome.IDEMPOTENCY_CONFLICT,
                                  "idempotency key was already used with a different payload"))
        if record.done:
            log.debug("send idempotent hit", extra={"idempotency_key": key, "original_status": record.status,
                                                     "original_error_code": record.body.get("error_code")})
            self.metrics.replays.inc()
            return Replay(Answer(record.status, record.body, replayed=True))
        self.metrics.conflicts.labels("in_flight").inc()
        return Refused(Result(
            Outcome.IDEMPOTENCY_IN_FLIGHT,
            f"a request with this idempotency key is still in flight after "
            f"{self.settings.idempotency_wait_seconds:g}s; retry later with the same key"))

    def _await_done(self, key: str, record: Record | None, fingerprint: str, deadline: float) -> Record | None:
        """Poll while the same payload is in flight elsewhere; return what is there at the end."""
        while record is not None and not record.done and record.fingerprint == fingerprint:
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_SECONDS)
            record = self.store.get(key)
        return record

    def _store_down(self, exc: StoreUnavailable) -> Turn:
        if self.settings.idempotency_failure_mode == "closed":
            log.error("idempotency store unavailable; refusing to send (IDEMPOTENCY_FAILURE_MODE=closed)",
                      extra={"cause": str(exc)})
            return Refused(Result(Outcome.STORE_UNAVAILABLE, f"{exc}; not sending (closed mode)"))
        log.error("idempotency store unavailable; sending without idempotency (IDEMPOTENCY_FAILURE_MODE=open)",
                  extra={"cause": str(exc)})
        return Unguarded()
