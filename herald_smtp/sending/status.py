"""Message status: what the relay said about each mail it accepted, kept MESSAGE_STATUS_TTL_SECONDS under its
message_id in the idempotency store.

    accepted(result, to, now) -> the record written when the relay answered the final dot with 2xx
    view(record)              -> the body of GET /v1/messages/{message_id}: the record and its status

The status is `accepted` until events arrive (bounced, delayed, delivered: read back from delivery status
notifications); then the most telling one: bounced, else delivered, else delayed. The relay's reply is
kept as it came, addresses masked, and its queue id (smtp/queue_ids.py) is the one to search the
provider's console for.
"""

from __future__ import annotations

import re

from ..addresses import mask_addresses, mask_email
from ..outcomes import Result
from ..timing import rfc3339

STATUSES = ("accepted", "delayed", "bounced", "delivered")
# The most telling event wins: a bounce after a delay is a bounce, a delivery after a delay a delivery.
_PRECEDENCE = ("bounced", "delivered", "delayed")
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})\b")


def accepted(result: Result, to: str, now: float) -> dict:
    """The status record of a mail the relay accepted (`now`: time.time())."""
    text = mask_addresses(result.reply or "")
    enhanced = _ENHANCED.match(text)
    return {
        "message_id": result.message_id,
        "accepted_at": rfc3339(now),
        "relay": result.relay,
        "reply": {"code": result.smtp_code, "enhanced_code": enhanced[1] if enhanced else None, "text": text},
        "relay_queue_id": result.relay_queue_id,
        "recipient": mask_email(to),
        "events": [],
    }


def view(record: dict) -> dict:
    """The record with its `status` first, as the API and `herald-smtp status` show it."""
    kinds = {event.get("event") for event in record.get("events") or []}
    status = next((kind for kind in _PRECEDENCE if kind in kinds), "accepted")
    return {"status": status, **record}

