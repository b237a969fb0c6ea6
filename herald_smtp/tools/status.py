"""`herald-smtp status MESSAGE_ID`: what the relay said about a mail, for the person at the terminal.

The same record as GET /v1/messages/{message_id}, read from the same store (REDIS_URL). Without Redis the
statuses live inside the running service's process: ask its API instead.
"""

from __future__ import annotations

from typing import Callable

from ..config import Settings
from ..idempotency.base import StoreUnavailable
from ..idempotency.store import open_store
from ..sending.status import view


def run_status(settings: Settings, message_id: str, out: Callable[[str], None] = print) -> int:
    """Print the message's status; 0 when known, 1 when unknown or expired, 2 when the store cannot answer."""
    if settings.redis_target is None:
        out("no REDIS_URL: message statuses live inside the running service; ask it: "
            f"GET /v1/messages/{message_id}")
        return 2
    store = open_store(settings.redis_target, settings.redis_key_prefix)
    try:
        record = store.get_status(message_id)
    except StoreUnavailable as exc:
        out(f"the store is unavailable: {exc}")
        return 2
    if record is None:
        out(f"{message_id}: unknown, or its status expired (kept {settings.message_status_ttl_seconds} s: "
            "MESSAGE_STATUS_TTL_SECONDS)")
        return 1
    for line in lines(view(record)):
        out(line)
    return 0


def lines(shown: dict) -> list[str]:
    reply = shown.get("reply") or {}
    result = [
        f"message_id      {shown['message_id']}",
        f"status          {shown['status']}",
        f"accepted at     {shown['accepted_at']} by {shown['relay']}",
        f"relay's reply   {reply.get('code')} {reply.get('text', '')}".rstrip(),
        f"relay queue id  {shown.get('relay_queue_id') or '(none in the reply)'}",
        f"recipient       {shown['recipient']}",
    ]
    for event in shown.get("events") or []:
        result.append(f"event           {_event_line(event)}")
    return result


def _event_line(event: dict) -> str:
    """2026-12-05T13:11:02Z bounced (hard) 5.1.1 at dns; mx.example.org: smtp; 550 5.1.1 <j***@...>: ..."""
    line = f"{event.get('recorded_at')} {event.get('event')} ({event.get('kind')})"
    if event.get("status"):
        line += f" {event['status']}"
    if event.get("remote_mta"):
        line += f" at {event['remote_mta']}"
    return line + (f": {event['diagnostic']}" if event.get("diagnostic") else "")
