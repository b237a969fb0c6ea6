"""The idempotency steps around one send: claim the key, commit just before the final dot, record.

    claim(key, fingerprint, hold) -> Owned     we hold the reservation: send
                                     Replay    a finished record with this payload: answer it again
                                     Refused   another payload (conflict), still in flight after the
                                               wait, abandoned at its commit point (outcome unknown),
                                               or the store failed and we must not send
                                     Unguarded the store is down and IDEMPOTENCY_FAILURE_MODE=open:
                                               send without idempotency
    commit(owned)                 -> None to send the final dot, or the Result to answer instead
    record(owned, result, answer)    keep the answer for the TTL, or release the key (outcomes.py
                                     says which)

The commit point is what makes a crash safe: from the moment the final dot may
be out, the key holds a record kept for the TTL, so a worker killed while
waiting for the server's reply (or a store failure at record time) leaves a
key that is never sent again; a duplicate gets "outcome unknown" once the
owner's hold deadline has passed.

Each step is a span (tracing.py) named for the store operation it runs:
idempotency.claim (reserve), idempotency.wait (get, polling a duplicate in
flight), idempotency.commit (commit) and idempotency.record (finish or
release). They carry what was decided, never the key: it may identify a person.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum

from .. import tracing
from ..config import FailureMode, Settings
from ..idempotency.base import Claim, Record, StatusWrite, Store, StoreUnavailable
from ..metrics import Metrics
from ..outcomes import Answer, Outcome, Result, answer_for

log = logging.getLogger("herald_smtp.send")

# How often a duplicate polls for the first request's result.
_POLL_SECONDS = 0.05
# Writing the final record: a second try after a short pause, then the committing record protects the key.
_RECORD_ATTEMPTS = 2
_RECORD_RETRY_PAUSE_SECONDS = 0.1

_ABANDONED = ("outcome unknown: a request with this idempotency key was sending the mail and stopped before "
              "it could record the result (its worker died or the store failed); the mail may have been "
              "delivered, so it is not sent again")


class Stage(Enum):
    RESERVED = "reserved"  # nothing of the mail can have been delivered
    COMMITTED = "committed"  # the final dot may go out (or has): the key must never be freed by a bug path
    LOST = "lost"  # our reservation expired and another request took the key over


@dataclass
class Owned:
    """Our hold on a key. Not frozen: commit() moves it on to the next stage."""

    claim: Claim
    fingerprint: str
    hold_until: float  # time.time() by which our send must be over; duplicates trust it after a crash
    stage: Stage = Stage.RESERVED


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

# Span attributes (constant: nothing is built while tracing is off).
_CLAIM = {"herald.idempotency.operation": "reserve"}
_WAIT = {"herald.idempotency.operation": "get"}
_COMMIT = {"herald.idempotency.operation": "commit"}
_FINISH = {"herald.idempotency.operation": "finish"}
_RELEASE = {"herald.idempotency.operation": "release"}


class KeyGuard:
    def __init__(self, settings: Settings, store: Store, metrics: Metrics):
        self.settings = settings
        self.store = store
        self.metrics = metrics

    def claim(self, key: str, fingerprint: str, hold_seconds: float, suppression: str | None = None) -> Turn:
        """`suppression`: the recipient's suppression key, looked up in the reservation's round trip (the Owned
        claim carries the entry)."""
        with tracing.span("idempotency.claim", _CLAIM):
            turn = self._claim(key, fingerprint, hold_seconds, suppression)
            if tracing.active():
                tracing.set_attributes({"herald.idempotency.turn": _turn_name(turn)})
            return turn

    def _claim(self, key: str, fingerprint: str, hold_seconds: float, suppression: str | None) -> Turn:
        deadline = time.monotonic() + self.settings.idempotency_wait_seconds
        while True:
            try:
                claim = self.store.reserve(key, fingerprint, hold_seconds, suppression)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("reserve").inc()
                tracing.fail("idempotency store unavailable at reserve")
                return self._store_down(exc)
            if claim.owned:
                return Owned(claim, fingerprint, time.time() + hold_seconds)
            try:
                with tracing.span("idempotency.wait", _WAIT):
                    record = self._await_done(key, claim.existing, fingerprint, deadline)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("wait").inc()
                tracing.fail("idempotency store unavailable while waiting for a duplicate in flight")
                # Another request holds this key and may be sending right now: sending too
                # could duplicate the mail, whatever the failure mode says.
                log.error("idempotency store failed while waiting for a duplicate in flight", extra={"cause": str(exc)})
                return Refused(Result(Outcome.STORE_UNAVAILABLE, f"{exc}; a request with this key was in flight, "
                                                                 "not sending a duplicate"))
            if record is not None:
                return self._decide(key, record, fingerprint)
            # The first request released the key (transient failure) or it expired: our turn.

    def commit(self, owned: Owned) -> Result | None:
        """Just before the final dot: make the key's record survive us. None: send the dot."""
        with tracing.span("idempotency.commit", _COMMIT):
            refusal = self._commit(owned)
            if tracing.active():
                tracing.set_attributes({"herald.idempotency.stage": owned.stage.value,
                                        "herald.idempotency.send": refusal is None})
            return refusal

    def _commit(self, owned: Owned) -> Result | None:
        record = Record(owned.fingerprint, committing=True, hold_until=owned.hold_until)
        try:
            claim = self.store.commit(owned.claim, record, self.settings.idempotency_ttl_seconds)
        except StoreUnavailable as exc:
            return self._commit_failed(owned, exc)
        if claim is None:
            # Our reservation expired and another request may hold the key: it sends, we must not.
            owned.stage = Stage.LOST
            log.error("idempotency reservation expired before the commit point; not sending",
                      extra={"idempotency_key": owned.claim.key})
            return Result(Outcome.IDEMPOTENCY_IN_FLIGHT, "the idempotency reservation expired before the mail was "
                                                         "committed; nothing was sent; retry later with the same key")
        owned.claim, owned.stage = claim, Stage.COMMITTED
        return None

    def _commit_failed(self, owned: Owned, exc: StoreUnavailable) -> Result | None:
        # The commit may have run in Redis even so (its reply came too late). The committing record keeps
        # the reservation's token, so record() frees or finishes the key in whichever state it is.
        self.metrics.store_errors.labels("commit").inc()
        tracing.fail("idempotency store unavailable at the commit point")
        if self.settings.idempotency_failure_mode == FailureMode.CLOSED:
            log.error("idempotency store unavailable at the commit point; not sending "
                      "(IDEMPOTENCY_FAILURE_MODE=closed)", extra={"cause": str(exc)})
            return Result(Outcome.STORE_UNAVAILABLE, f"{exc}; not sending (closed mode), nothing was transmitted")
        log.error("idempotency store unavailable at the commit point; sending anyway "
                  "(IDEMPOTENCY_FAILURE_MODE=open)", extra={"cause": str(exc)})
        owned.stage = Stage.COMMITTED
        return None

    def record(self, owned: Owned, result: Result, answer: Answer | None, status: StatusWrite | None = None) -> None:
        """Keep the answer or release the key, as outcomes.py says; `status` (an accepted mail's) goes in the
        same round trip."""
        if owned.stage is Stage.LOST:
            return  # the key is another request's now (and nothing was sent: there is no status)
        with tracing.span("idempotency.record", _FINISH if result.outcome.keep else _RELEASE):
            self._record(owned, result, answer, status)

    def keep_status(self, status: StatusWrite) -> None:
        """A status record on its own (a send without an idempotency key). A store failure costs the record, not
        the answer: the mail was accepted."""
        try:
            self.store.put_status(status)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("status").inc()
            log.error("could not keep the message status in the store",
                      extra={"cause": str(exc), "message_id": status.message_id})

    def _record(self, owned: Owned, result: Result, answer: Answer | None, status: StatusWrite | None) -> None:
        claim = owned.claim
        for attempt in range(_RECORD_ATTEMPTS):
            try:
                stored = self._write_outcome(owned, result, answer, status)
                break
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("record").inc()
                tracing.fail("idempotency store unavailable at record")
                if attempt + 1 < _RECORD_ATTEMPTS:
                    time.sleep(_RECORD_RETRY_PAUSE_SECONDS)
                    continue
                # The mail's fate is decided and the caller gets it. A committed key stays protected by
                # its committing record; a key that never reached the commit point is free once its
                # reservation expires, which is right: nothing of that mail was transmitted.
                log.error("could not record the send outcome in the idempotency store",
                          extra={"cause": str(exc), "idempotency_key": claim.key, "outcome": result.outcome.value})
                return
        if tracing.active():
            tracing.set_attributes({"herald.idempotency.recorded": stored})
        if not stored:
            log.error("idempotency reservation expired before the send finished; outcome not recorded",
                      extra={"idempotency_key": claim.key, "outcome": result.outcome.value})

    def _write_outcome(self, owned: Owned, result: Result, answer: Answer | None, status: StatusWrite | None) -> bool:
        if result.outcome.keep:
            answer = answer or answer_for(result)
            record = Record(owned.fingerprint, answer.status, answer.body)
            return self.store.finish(owned.claim, record, self.settings.idempotency_ttl_seconds, status)
        return self.store.release(owned.claim)

    def _decide(self, key: str, record: Record, fingerprint: str) -> Turn:
        """What a duplicate does with the record it found once the wait is over."""
        if record.fingerprint != fingerprint:
            self.metrics.conflicts.labels("payload_mismatch").inc()
            return Refused(Result(Outcome.IDEMPOTENCY_CONFLICT,
                                  "idempotency key was already used with a different payload"))
        if record.status is not None:  # done
            body = record.body or {}
            log.debug("send idempotent hit", extra={"idempotency_key": key, "original_status": record.status,
                                                     "original_error_code": body.get("error_code")})
            self.metrics.replays.inc()
            return Replay(Answer(record.status, body, replayed=True))
        if record.abandoned(time.time()):
            log.error("idempotency key abandoned at its commit point; outcome unknown, not sending again",
                      extra={"idempotency_key": key})
            return Refused(Result(Outcome.SMTP_UNKNOWN, _ABANDONED))
        self.metrics.conflicts.labels("in_flight").inc()
        return Refused(Result(
            Outcome.IDEMPOTENCY_IN_FLIGHT,
            f"a request with this idempotency key is still in flight after "
            f"{self.settings.idempotency_wait_seconds:g}s; retry later with the same key"))

    def _await_done(self, key: str, record: Record | None, fingerprint: str, deadline: float) -> Record | None:
        """Poll while the same payload is in flight elsewhere; return what is there at the end."""
        while record is not None and not record.done and record.fingerprint == fingerprint:
            if time.monotonic() >= deadline or record.abandoned(time.time()):
                break
            time.sleep(_POLL_SECONDS)
            record = self.store.get(key)
        return record

    def _store_down(self, exc: StoreUnavailable) -> Turn:
        if self.settings.idempotency_failure_mode == FailureMode.CLOSED:
            log.error("idempotency store unavailable; refusing to send (IDEMPOTENCY_FAILURE_MODE=closed)",
                      extra={"cause": str(exc)})
            return Refused(Result(Outcome.STORE_UNAVAILABLE, f"{exc}; not sending (closed mode)"))
        log.error("idempotency store unavailable; sending without idempotency (IDEMPOTENCY_FAILURE_MODE=open)",
                  extra={"cause": str(exc)})
        return Unguarded()


def _turn_name(turn: Turn) -> str:
    """owned, unguarded, replay, or the refusal's outcome (idempotency_conflict, store_unavailable ...)."""
    if isinstance(turn, Refused):
        return turn.result.outcome.value
    return type(turn).__name__.lower()
