"""GET /v1/messages/{message_id}: what the relay said about a mail it accepted (sending/status.py).

200 with the status record; 404 when the message_id is unknown or its record expired
(MESSAGE_STATUS_TTL_SECONDS); 503 when the store cannot answer. Protected by the API key like every
blueprint but health (auth.py).
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint

from ..idempotency.base import StoreUnavailable
from ..outcomes import Answer, Outcome, Result
from ..sending.status import view
from .responses import render, render_result
from .services import services

log = logging.getLogger("herald_smtp.app")

bp = Blueprint("messages", __name__)

# The message_ids herald-smtp writes: 32 hex digits @ the sender's domain. Anything else cannot be known.
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}@[A-Za-z0-9.-]{1,253}")


@bp.get("/v1/messages/<path:message_id>", provide_automatic_options=False)
def message(message_id: str):
    s = services()
    if not _MESSAGE_ID.fullmatch(message_id):
        return _unknown(s.settings.message_status_ttl_seconds)
    try:
        record = s.store.get_status(message_id)
    except StoreUnavailable as exc:
        s.metrics.store_errors.labels("status").inc()
        log.error("message status: store unavailable", extra={"cause": str(exc)})
        return render_result(Result(Outcome.STORE_UNAVAILABLE, "the store that keeps message statuses is "
                                                               "unavailable; retry later"))
    if record is None:
        return _unknown(s.settings.message_status_ttl_seconds)
    return render(Answer(200, view(record)))


def _unknown(ttl_seconds: int):
    return render_result(Result(Outcome.NOT_FOUND, f"unknown message_id, or its status expired (statuses are "
                                                   f"kept {ttl_seconds} s: MESSAGE_STATUS_TTL_SECONDS)"))
