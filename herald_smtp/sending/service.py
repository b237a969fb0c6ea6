"""The send use case: one SendRequest in, one Answer out, at most one mail per idempotency key.

    SendRequest -> [SMTP configured?] -> claim the key -> build and send the mail -> record -> Answer

This module decides *when* to send; claim.py guards the key; the mailer
decides *how* to send; outcomes.py decides what each result means for the
caller and for the record.
"""

from __future__ import annotations

import time

from ..config import Settings
from ..idempotency.base import Store
from ..metrics import Metrics
from ..outcomes import Answer, Outcome, Result, answer_for
from ..smtp.mailer import Mailer, SendAborted
from ..timing import reservation_hold_seconds, send_budget
from .claim import KeyGuard, Owned, Refused, Replay, Unguarded
from .fingerprint import fingerprint
from .message import build_message, new_message_id
from .report import report
from .request import SendRequest


class SendService:
    def __init__(self, settings: Settings, store: Store, mailer: Mailer, metrics: Metrics):
        self.settings = settings
        self.mailer = mailer
        self.metrics = metrics
        self.guard = KeyGuard(settings, store, metrics)

    def handle(self, request: SendRequest) -> Answer:
        if not self.settings.smtp_configured:
            return self._refuse(request, Result(Outcome.SMTP_NOT_CONFIGURED, "SMTP not configured"))
        budget = send_budget(self.settings, request.timeout_seconds)
        if request.idempotency_key is None:
            return self._send(request, budget)
        turn = self.guard.claim(request.idempotency_key, fingerprint(request, self.settings.idempotency_secret),
                                reservation_hold_seconds(budget))
        match turn:
            case Owned():
                return self._send(request, budget, turn)
            case Replay(answer):
                return answer
            case Refused(result):
                return self._refuse(request, result)
            case Unguarded():
                return self._send(request, budget)
        raise AssertionError(f"unexpected claim turn {turn!r}")

    def close(self) -> None:
        """At worker exit: QUIT the pooled SMTP connections."""
        self.mailer.close()

    def _send(self, request: SendRequest, budget: float, owned: Owned | None = None) -> Answer:
        started = time.monotonic()
        try:
            message_id = new_message_id(self.settings)
            msg = build_message(request, self.settings, message_id)
            result = self.mailer.send(msg, str(request.to), budget, before_dot=self._commit_point(owned))
        except Exception:
            # A bug of ours. Before the commit point nothing can have been delivered: free the key so
            # the caller's retry is not stuck behind a dead reservation. After it, the committing
            # record stays: the mail may be out.
            if owned is not None and owned.stage == "reserved":
                self.guard.record(owned, Result(Outcome.INTERNAL_ERROR), None)
            raise
        seconds = time.monotonic() - started
        self.metrics.send_duration.labels(result.outcome.value).observe(seconds)
        report(result, str(request.to), seconds)
        answer = answer_for(result)
        if owned is not None:
            self.guard.record(owned, result, answer)
        return answer

    def _commit_point(self, owned: Owned | None):
        """What the mailer runs just before the final dot: commit the key, or stop this send."""
        if owned is None:
            return None

        def commit() -> None:
            refusal = self.guard.commit(owned)
            if refusal is not None:
                raise SendAborted(refusal)

        return commit

    def _refuse(self, request: SendRequest, result: Result) -> Answer:
        report(result, str(request.to))
        return answer_for(result)
