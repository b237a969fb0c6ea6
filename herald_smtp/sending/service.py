"""The send use case: one SendRequest in, one Answer out, at most one mail per idempotency key.

    SendRequest -> [allowed domain?] -> [SMTP configured?] -> claim the key (+ [suppressed?]) -> [rate limits]
                -> build and send the mail -> [suppress a recipient refused for good] -> record (+ status)
                -> Answer

This module decides *when* to send; claim.py guards the key; abuse.py holds
the allowlist and the rate limits; suppression.py the list of recipients
refused for good; status.py what is kept of an accepted mail; the mailer
decides *how* to send; outcomes.py decides what each result means for the
caller and for the record.
The rate limits are taken only by a request that is about to send (we own the
key, there is none, or the store is down and we send unguarded): a replay is
never counted, and a denial releases the reservation like any refusal the
record does not keep.
"""

from __future__ import annotations

import time

from .. import tracing
from ..config import Settings
from ..idempotency.base import StatusWrite, Store, StoreUnavailable
from ..metrics import Metrics
from ..outcomes import Answer, Outcome, Result, answer_for
from ..smtp.mailer import Mailer, SendAborted
from ..timing import reservation_hold_seconds, send_budget
from .abuse import AbuseLimits
from .claim import KeyGuard, Owned, Refused, Replay, Stage, Unguarded
from .fingerprint import fingerprint
from .message import MailWriter, new_message_id
from .report import report
from .request import SendRequest
from .status import accepted
from .suppression import SuppressionList


# On the request span of a replay: the stored answer is given again, nothing is sent.
_REPLAYED = {"herald.outcome": "replayed"}


class SendService:
    def __init__(self, settings: Settings, store: Store, mailer: Mailer, metrics: Metrics):
        self.settings = settings
        self.mailer = mailer
        self.metrics = metrics
        self.guard = KeyGuard(settings, store, metrics)
        self.suppressions = SuppressionList(settings, store, metrics)
        self.abuse = AbuseLimits(settings, metrics)
        self.writer = MailWriter(settings)

    def handle(self, request: SendRequest) -> Answer:
        refusal = self.abuse.destination_refusal(request.to)
        if refusal is not None:
            return self._refuse(request, refusal)
        if not self.settings.smtp_configured:
            return self._refuse(request, Result(Outcome.SMTP_NOT_CONFIGURED, "SMTP not configured"))
        budget = send_budget(self.settings, request.timeout_seconds)
        if request.idempotency_key is None:
            return self._without_key(request, budget)
        turn = self.guard.claim(request.idempotency_key, fingerprint(request, self.settings.idempotency_secret),
                                reservation_hold_seconds(budget), self.suppressions.key(request.to))
        match turn:
            case Owned() if turn.claim.suppression is not None:
                return self._refuse(request, self.suppressions.refusal(turn.claim.suppression), turn)  # releases
            case Owned():
                return self._admit_and_send(request, budget, turn)
            case Replay(answer):
                tracing.set_attributes(_REPLAYED)
                return answer
            case Refused(result):
                return self._refuse(request, result)
            case Unguarded():
                # The store just failed: no status record either (another store timeout would only delay the answer).
                return self._admit_and_send(request, budget, store_up=False)
        raise AssertionError(f"unexpected claim turn {turn!r}")

    def close(self) -> None:
        """At worker exit: QUIT the pooled SMTP connections."""
        self.mailer.close()

    def _without_key(self, request: SendRequest, budget: float) -> Answer:
        """No idempotency key to claim: the suppression list is asked on its own."""
        try:
            suppressed = self.suppressions.lookup(request.to)
        except StoreUnavailable:
            return self._admit_and_send(request, budget, store_up=False)
        if suppressed is not None:
            return self._refuse(request, self.suppressions.refusal(suppressed))
        return self._admit_and_send(request, budget)

    def _admit_and_send(self, request: SendRequest, budget: float, owned: Owned | None = None,
                        store_up: bool = True) -> Answer:
        try:
            refusal = self.abuse.admit(request.to)
        except Exception:
            self._release_after_bug(owned)
            raise
        if refusal is not None:
            return self._refuse(request, refusal, owned)
        return self._send(request, budget, owned, store_up)

    def _send(self, request: SendRequest, budget: float, owned: Owned | None, store_up: bool) -> Answer:
        started = time.monotonic()
        try:
            message_id = new_message_id(self.settings)
            mail = self.writer.build(request, message_id)
            result = self.mailer.send(mail, str(request.to), budget, before_dot=self._commit_point(owned))
        except Exception:
            self._release_after_bug(owned)
            raise
        seconds = time.monotonic() - started
        self.metrics.send_duration.labels(result.outcome.value, result.relay or "").observe(seconds)
        report(result, str(request.to), seconds)
        answer = answer_for(result)
        if store_up:  # a store that just failed is not asked again in this request
            self.suppressions.record(result, request.to, message_id)
        status = self._status(result, str(request.to)) if store_up else None
        if owned is not None:
            self.guard.record(owned, result, answer, status)
        elif status is not None:
            self.guard.keep_status(status)
        return answer

    def _status(self, result: Result, to: str) -> StatusWrite | None:
        """The status record of a mail the relay accepted (sending/status.py); None for any other outcome."""
        if not result.ok or result.message_id is None:
            return None
        return StatusWrite(result.message_id, accepted(result, to, time.time()),
                           self.settings.message_status_ttl_seconds)

    def _release_after_bug(self, owned: Owned | None) -> None:
        # A bug of ours. Before the commit point nothing can have been delivered: free the key so
        # the caller's retry is not stuck behind a dead reservation. After it, the committing
        # record stays: the mail may be out.
        if owned is not None and owned.stage is Stage.RESERVED:
            self.guard.record(owned, Result(Outcome.INTERNAL_ERROR), None)

    def _commit_point(self, owned: Owned | None):
        """What the mailer runs just before the final dot: commit the key, or stop this send."""
        if owned is None:
            return None

        def commit() -> None:
            refusal = self.guard.commit(owned)
            if refusal is not None:
                raise SendAborted(refusal)

        return commit

    def _refuse(self, request: SendRequest, result: Result, owned: Owned | None = None) -> Answer:
        """Answer without sending; a key we own is recorded as outcomes.py says (rate_limited and
        provider_down release it)."""
        report(result, str(request.to))
        answer = answer_for(result)
        if owned is not None:
            self.guard.record(owned, result, answer)
        return answer
