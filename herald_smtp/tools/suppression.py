"""`herald-smtp suppression show|remove ADDRESS` and `suppression list`: the suppression list at the terminal.

The same entries as GET/DELETE /v1/suppressions/{address}, in the same store (REDIS_URL); addresses are
looked up by their HMAC and listed masked. Without Redis the list lives inside the running service: use its
API instead.
"""

from __future__ import annotations

from typing import Callable

from ..addresses import InvalidAddress, mask_email, parse_address
from ..config import Settings
from ..idempotency.base import Store, StoreUnavailable
from ..idempotency.store import open_store
from ..sending.suppression import key_for

LIST_LIMIT = 1000


def run_suppression(settings: Settings, action: str, address: str | None, out: Callable[[str], None] = print) -> int:
    """0: done (or found); 1: not suppressed / not an address; 2: no shared store, or it is unavailable."""
    if settings.redis_target is None:
        out("no REDIS_URL: the suppression list lives inside the running service; use its API: "
            "GET or DELETE /v1/suppressions/ADDRESS")
        return 2
    store = open_store(settings.redis_target, settings.redis_key_prefix)
    try:
        if action == "list":
            return _list(store, out)
        return _one(store, settings, action, address or "", out)
    except StoreUnavailable as exc:
        out(f"the store is unavailable: {exc}")
        return 2


def _list(store: Store, out: Callable[[str], None]) -> int:
    entries = store.suppressions(LIST_LIMIT)
    for entry in entries:
        out(_line(entry))
    out(f"{len(entries)} suppressed" + (f" (the first {LIST_LIMIT})" if len(entries) >= LIST_LIMIT else ""))
    return 0


def _one(store: Store, settings: Settings, action: str, address: str, out: Callable[[str], None]) -> int:
    try:
        key = key_for(parse_address(address, international=True), settings.idempotency_secret)
    except InvalidAddress:
        out(f"{mask_email(address)}: not a valid email address")
        return 1
    if action == "remove":
        lifted = store.unsuppress(key)
        out(f"{mask_email(address)}: " + ("suppression lifted" if lifted else "was not suppressed"))
        return 0 if lifted else 1
    entry = store.get_suppression(key)
    if entry is None:
        out(f"{mask_email(address)}: not suppressed")
        return 1
    out(_line(entry))
    return 0


def _line(entry: dict) -> str:
    reason = entry.get("reason") or {}
    code = " ".join(str(part) for part in (reason.get("code"), reason.get("enhanced_code")) if part)
    return f"{entry.get('recipient')}  since {entry.get('since')}  {code}  message_id {entry.get('message_id')}"
