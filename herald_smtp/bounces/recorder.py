"""Recording one notification: an event on the original's status record, a suppression for a hard bounce
about the address, the `bounce` log line and the metrics; then which folder the mail goes to.

    Recorder(settings, store, metrics).record(raw) -> Verdict

Safe to run twice on the same mail, which happens when the reader dies after recording and before moving it:
the store keeps one event per notification (add_event answers "duplicate"), the suppression is written
again, and the log line and the counters come only with the first recording.
A store failure is raised: the mail stays in the inbox and is read again on the next pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..addresses import InvalidAddress, mask_email, parse_address
from ..config import Settings
from ..idempotency.base import Store
from ..metrics import BounceMetrics
from ..sending import suppression
from ..timing import rfc3339
from .notification import Notification, RecipientReport, read

log = logging.getLogger("herald_smtp.bounces")

PROCESSED, UNRECOGNISED = "Processed", "Unrecognised"


@dataclass(frozen=True)
class Verdict:
    folder: str  # PROCESSED or UNRECOGNISED
    reason: str  # why, for the reader's log line


class Recorder:
    def __init__(self, settings: Settings, store: Store, metrics: BounceMetrics, clock=time.time):
        self.suppression_ttl = settings.suppression_ttl_seconds
        self.secret = settings.idempotency_secret
        self.store = store
        self.metrics = metrics
        self.clock = clock

    def record(self, raw: bytes) -> Verdict:
        try:
            notification = read(raw)
        except Exception as exc:  # noqa: BLE001 - a mail no parser can read goes aside; it must not stop the reader
            return Verdict(UNRECOGNISED, f"unreadable ({type(exc).__name__})")
        if notification is None:
            return Verdict(UNRECOGNISED, "not a delivery status notification")
        if notification.message_id is None:
            return Verdict(UNRECOGNISED, "names no message (neither an ENVID nor the original's Message-ID)")
        results = [self._record_one(notification, report) for report in notification.recipients]
        if all(result == "unknown" for result in results):
            return Verdict(UNRECOGNISED, f"message {notification.message_id} is unknown here, or its status expired")
        if all(result == "duplicate" for result in results if result != "unknown"):
            return Verdict(PROCESSED, "already recorded")
        return Verdict(PROCESSED, "recorded")

    def _record_one(self, notification: Notification, report: RecipientReport) -> str:
        message_id = notification.message_id or ""
        event = self._event(notification, report)
        added = self.store.add_event(message_id, event)
        if added == "unknown":
            return added
        suppressed = self._suppress(report, message_id, notification.reporting_mta)
        if added == "added":
            self.metrics.bounces.labels(report.kind).inc()
            if suppressed:
                self.metrics.suppressions.labels("added").inc()
            log.log(logging.WARNING if report.event == "bounced" else logging.INFO, "bounce",
                    extra={"message_id": message_id, "to": event["recipient"], "event": report.event,
                           "kind": report.kind, "status": report.status, "diagnostic": report.diagnostic,
                           "remote_mta": report.remote_mta, "suppressed": suppressed})
        return added

    def _event(self, notification: Notification, report: RecipientReport) -> dict:
        return {
            "event": report.event,
            "kind": report.kind,
            "action": report.action,
            "status": report.status or None,
            "diagnostic": report.diagnostic or None,
            "remote_mta": report.remote_mta or None,
            "reporting_mta": notification.reporting_mta or None,
            "arrived_at": notification.arrived_at or None,
            "recorded_at": rfc3339(self.clock(), "seconds"),
            "recipient": mask_email(report.address),
            "notification_id": notification.notification_id,
        }

    def _suppress(self, report: RecipientReport, message_id: str, reporting_mta: str) -> bool:
        """Suppress the recipient of a hard bounce about the address (5.1.x, 5.2.1), as a refusal at RCPT would."""
        if not (self.suppression_ttl and report.kind == "hard" and suppression.address_status(report.status)):
            return False
        try:
            address = parse_address(report.address, international=True)
        except InvalidAddress:
            log.warning("bounced address not suppressed: not an address we could have sent to",
                        extra={"message_id": message_id, "to": mask_email(report.address)})
            return False
        kept = suppression.bounce_entry(report.address, report.status, report.diagnostic, message_id,
                                        reporting_mta, self.clock())
        self.store.suppress(suppression.key_for(address, self.secret), kept, self.suppression_ttl)
        return True
