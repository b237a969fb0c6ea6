"""The suppression list: recipients that failed permanently, refused at once for SUPPRESSION_TTL_SECONDS.

    key_for(to, secret)           -> the store key: an HMAC of the address (IDEMPOTENCY_SECRET), never the address
    suppresses(result)            -> does this refusal suppress the recipient? (5.1.x, 5.2.1 at RCPT: the mailbox
                                     does not exist, or is disabled)
    entry(result, to, id, now)    -> what is kept: the masked address, the reason, when, the message_id
    address_status(code)          -> is this enhanced status code about the address (5.1.x, 5.2.1)? A hard
                                     bounce read back (bounces/recorder.py) suppresses on the same codes
    refusal(entry)                -> the 400 invalid_destination answer a suppressed send gets, without SMTP

A temporary failure (4xx, a delay) never suppresses. The allowlist (ALLOWED_RECIPIENT_DOMAINS) does not
exempt an address: a mailbox that does not exist is refused the same on every allowed domain.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time

from ..addresses import Mailbox, mask_addresses, mask_email
from ..config import Settings
from ..idempotency.base import Store, StoreUnavailable
from ..metrics import Metrics
from ..outcomes import Outcome, Result
from ..timing import rfc3339

log = logging.getLogger("herald_smtp.send")

# RFC 3463: 5.1.x are addressing failures (bad mailbox 5.1.1, bad domain 5.1.2, moved 5.1.6, null MX 5.1.10);
# 5.2.1 is a disabled mailbox. 5.2.2 (mailbox full) and 5.7.x (policy) are not about the address existing.
_PERMANENT_ADDRESS = re.compile(r"(?:^|\s)(5\.1\.\d{1,3}|5\.2\.1)\b")


def key_for(to: Mailbox, secret: str) -> str:
    """The suppression key of an address: case-folded, its domain in IDNA form, keyed with IDEMPOTENCY_SECRET."""
    canonical = f"{to.local.lower()}@{to.ascii_domain.lower()}".encode("utf-8")
    return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def suppresses(result: Result) -> bool:
    return result.outcome is Outcome.RECIPIENT_REJECTED and bool(_PERMANENT_ADDRESS.search(result.message or ""))


def address_status(enhanced_code: str) -> bool:
    return bool(_PERMANENT_ADDRESS.fullmatch(enhanced_code))


def entry(result: Result, to: str, message_id: str | None, now: float) -> dict:
    """The suppression entry of a recipient the relay refused permanently (`now`: time.time())."""
    found = _PERMANENT_ADDRESS.search(result.message or "")
    reason = {"code": result.smtp_code, "enhanced_code": found[1] if found else None,
              "text": mask_addresses(result.message or "")}
    return _entry(to, reason, message_id, result.relay, now, "rcpt")


def bounce_entry(to: str, status: str, diagnostic: str, message_id: str, reporting_mta: str, now: float) -> dict:
    """The suppression entry of a recipient a notification read back says bounced for good."""
    reason = {"code": None, "enhanced_code": status, "text": diagnostic}
    return _entry(to, reason, message_id, reporting_mta or None, now, "bounce")


def _entry(to: str, reason: dict, message_id: str | None, relay: str | None, now: float, source: str) -> dict:
    """source: rcpt (the relay refused it at RCPT TO) or bounce (a notification read back said so)."""
    return {
        "recipient": mask_email(to),
        "source": source,
        "reason": reason,
        "since": rfc3339(now, "seconds"),
        "message_id": message_id,
        "relay": relay,
    }


def refusal(suppressed: dict) -> Result:
    reason = suppressed.get("reason") or {}
    code = " ".join(str(part) for part in (reason.get("code"), reason.get("enhanced_code")) if part)
    what = ("a delivery status notification said it bounced permanently" if suppressed.get("source") == "bounce"
            else "the relay refused it permanently")
    return Result(Outcome.SUPPRESSED,
                  f"recipient suppressed since {suppressed.get('since')}: {what} "
                  f"({code or 'no code'}); nothing was sent. Lift it with DELETE /v1/suppressions/{{address}} "
                  "once the address is fixed")


class SuppressionList:
    """The list in the store, as the send service uses it; off when SUPPRESSION_TTL_SECONDS is 0."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics):
        self.ttl_seconds = settings.suppression_ttl_seconds
        self.secret = settings.idempotency_secret
        self.store = store
        self.metrics = metrics

    def key(self, to: Mailbox) -> str | None:
        """The key reserve() looks up in the same round trip; None while suppression is off."""
        return key_for(to, self.secret) if self.ttl_seconds else None

    def lookup(self, to: Mailbox) -> dict | None:
        """The recipient's entry, for a send that reserves no key. A store failure is raised: the caller sends
        without the list (and without touching the failed store again)."""
        if not self.ttl_seconds:
            return None
        try:
            return self.store.get_suppression(key_for(to, self.secret))
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("suppression").inc()
            log.error("suppression lookup failed; sending without it", extra={"cause": str(exc)})
            raise

    def refusal(self, suppressed: dict) -> Result:
        self.metrics.suppressions.labels("refused").inc()
        return refusal(suppressed)

    def record(self, result: Result, to: Mailbox, message_id: str | None) -> None:
        """After a send: suppress the recipient if the relay refused it permanently."""
        if not (self.ttl_seconds and suppresses(result)):
            return
        kept = entry(result, str(to), message_id, time.time())
        try:
            self.store.suppress(key_for(to, self.secret), kept, self.ttl_seconds)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("suppression").inc()
            log.error("could not suppress the recipient", extra={"cause": str(exc), "to": kept["recipient"]})
            return
        self.metrics.suppressions.labels("added").inc()
        log.warning("recipient suppressed", extra={"to": kept["recipient"], "message_id": message_id,
                                                   "reason": kept["reason"]["text"],
                                                   "ttl_seconds": self.ttl_seconds})
