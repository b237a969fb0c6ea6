"""The two log lines operators grep for, one per request: `send ok` and `send_failed`."""

from __future__ import annotations

import logging

from .. import tracing
from ..addresses import mask_addresses, mask_email
from ..outcomes import Outcome, Result

log = logging.getLogger("herald_smtp.send")


def report(result: Result, to: str | None, seconds: float = 0.0) -> None:
    """`to` is the recipient as the caller gave it (masked here), or None when there was none."""
    masked = mask_email(to) if to else None
    duration_ms = round(seconds * 1000, 1)
    if tracing.active():  # on the request span: the answer's status comes from the answer (tracing.py)
        tracing.set_attributes({"herald.outcome": result.outcome.value, "herald.to": masked,
                                "herald.smtp.relay": result.relay, "herald.smtp.phase": result.phase,
                                "herald.smtp.reply_code": result.smtp_code})
    if result.ok:
        log.info("send ok", extra={"message_id": result.message_id, "to": masked, "relay": result.relay,
                                   "relay_queue_id": result.relay_queue_id, "duration_ms": duration_ms})
        return
    fields = {
        "error_code": result.outcome.error_code,
        "errmsg": mask_addresses(result.message),
        "smtp_code": result.smtp_code,
        "phase": result.phase,
        "relay": result.relay,
        "outcome": result.outcome.value,
        "to": masked,
        "duration_ms": duration_ms,
    }
    if result.limit:
        fields["limit"] = result.limit
    log.warning("send suppressed" if result.outcome is Outcome.SUPPRESSED else "send_failed", extra=fields)
