"""The send use case: idempotency around the mailer, one Answer per request.

    SendRequest -> [SMTP configured?] -> [reserve key | wait | replay] -> mailer -> record -> Answer

This module decides *when* to send; the mailer decides *how*; outcomes.py
decides what each result means for the caller and for the record.
"""

from __future__ import annotations

import logging
import time

from .config import Settings
from .idempotency import Claim, Record, Store, StoreUnavailable
from .logs import mask_addresses, mask_email
from .mailer import Mailer
from .metrics import Metrics
from .message import build_message, new_message_id
from .outcomes import Answer, Result, answer_for
from .payload import SendRequest

log = logging.getLogger("herald_smtp.send")

# How often a duplicate polls for the first request's result.
_POLL_SECONDS = 0.05
# A reservation outlives the SMTP budget by this margin, so it cannot expire
# while its owner is still talking to the server.
_HOLD_MARGIN_SECONDS = 30.0


class SendService:
    def __init__(self, settings: Settings, store: Store, mailer: Mailer, metrics: Metrics):
        self.settings = settings
        self.store = store
        self.mailer = mailer
        self.metrics = metrics

    def handle(self, request: SendRequest) -> Answer:
        if not self.settings.smtp_configured:
            return self._answer(request, Result("smtp_not_configured", "SMTP not configured"))
        if request.idempotency_key is None:
            return self._send(request)
        return self._send_once(request, request.fingerprint())

    # --- idempotency

    def _send_once(self, request: SendRequest, fingerprint: str) -> Answer:
        key = request.idempotency_key
        deadline = time.monotonic() + self.settings.idempotency_wait_seconds
        hold = self.settings.send_worst_case_seconds(self._budget(request)) + _HOLD_MARGIN_SECONDS
        while True:
            try:
                claim = self.store.reserve(key, fingerprint, hold)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("reserve").inc()
                return self._store_down(request, exc)
            if claim.owned:
                return self._send(request, claim, fingerprint)
            try:
                record = self._await_done(key, claim.existing, fingerprint, deadline)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("wait").inc()
                # Another request holds this key and may be sending right now: sending too
                # could duplicate the mail, whatever the failure mode says.
                log.error("idempotency store failed while waiting for a duplicate in flight", extra={"cause": str(exc)})
                return self._answer(request, Result("store_unavailable", f"{exc}; a request with this key was in "
                                                                         "flight, not sending a duplicate"))
            if record is None:
                continue  # the first request released the key (transient failure) or it expired: our turn
            if record.fingerprint != fingerprint:
                self.metrics.conflicts.labels("payload_mismatch").inc()
                return self._answer(request, Result(
                    "idempotency_conflict", "idempotency key was already used with a different payload"))
            if record.done:
                log.debug("send idempotent hit", extra={"idempotency_key": key, "original_status": record.status,
                                                         "original_error_code": record.body.get("error_code")})
                self.metrics.replays.inc()
                return Answer(record.status, record.body, replayed=True)
            self.metrics.conflicts.labels("in_flight").inc()
            return self._answer(request, Result(
                "idempotency_in_flight",
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

    def _store_down(self, request: SendRequest, exc: StoreUnavailable) -> Answer:
        if self.settings.idempotency_failure_mode == "closed":
            log.error("idempotency store unavailable; refusing to send (IDEMPOTENCY_FAILURE_MODE=closed)",
                      extra={"cause": str(exc)})
            return self._answer(request, Result("store_unavailable", f"{exc}; not sending (closed mode)"))
        log.error("idempotency store unavailable; sending without idempotency (IDEMPOTENCY_FAILURE_MODE=open)",
                  extra={"cause": str(exc)})
        return self._send(request)

    # --- sending

    def _send(self, request: SendRequest, claim: Claim | None = None, fingerprint: str = "") -> Answer:
        started = time.monotonic()
        try:
            message_id = new_message_id(self.settings.smtp_from)
            msg = build_message(request, self.settings, message_id)
            result = self.mailer.send(msg, request.to, self._budget(request))
        except Exception:
            # A bug of ours, before anything reached the server in every case we know of:
            # free the key so the caller's retry is not stuck behind a dead reservation.
            if claim is not None:
                self._record(claim, Result("internal_error"), None, fingerprint)
            raise
        seconds = time.monotonic() - started
        self.metrics.send_duration.labels(result.outcome).observe(seconds)
        answer = self._answer(request, result, seconds)
        if claim is not None:
            self._record(claim, result, answer, fingerprint)
        return answer

    def _record(self, claim: Claim, result: Result, answer: Answer | None, fingerprint: str) -> None:
        try:
            if result.info.keep:
                record = Record(fingerprint, answer.status, answer.body)
                stored = self.store.finish(claim, record, self.settings.idempotency_ttl_seconds)
            else:
                stored = self.store.release(claim)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("record").inc()
            # The mail's fate is decided and the caller gets it; but until the reservation
            # expires a retry gets 409, and after that it would send again.
            log.error("could not record the send outcome in the idempotency store",
                      extra={"cause": str(exc), "idempotency_key": claim.key, "outcome": result.outcome})
            return
        if not stored:
            log.error("idempotency reservation expired before the send finished; outcome not recorded",
                      extra={"idempotency_key": claim.key, "outcome": result.outcome})

    def _budget(self, request: SendRequest) -> float:
        """The SMTP time budget: SMTP_TIMEOUT_SECONDS, or less if the caller asked."""
        if request.timeout_seconds:
            return min(self.settings.smtp_timeout_seconds, request.timeout_seconds)
        return self.settings.smtp_timeout_seconds

    def _answer(self, request: SendRequest, result: Result, seconds: float = 0.0) -> Answer:
        log_result(result, request.to, seconds)
        return answer_for(result)


def log_result(result: Result, to: str | None, seconds: float) -> None:
    """`send ok` / `send_failed`: the two lines operators grep for."""
    masked = mask_email(to) if to else None
    duration_ms = round(seconds * 1000, 1)
    if result.ok:
        log.info("send ok", extra={"message_id": result.message_id, "to": masked, "duration_ms": duration_ms})
        return
    log.warning("send_failed", extra={
        "error_code": result.info.error_code,
        "errmsg": mask_addresses(result.message),
        "smtp_code": result.smtp_code,
        "phase": result.phase,
        "outcome": result.outcome,
        "to": masked,
        "duration_ms": duration_ms,
    })
