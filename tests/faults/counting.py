"""Counting from what the SMTP server received: one mail per key answered ok, never two.

Every mail names its idempotency key in the subject ("Your code [<key>]"),
so the server's `.messages` (mails it accepted with 250) say which keys were
delivered and how often. For one scenario's keys:

- lost: a key answered `ok: true` (fresh or replayed) with no mail received;
- doubled: a key with more than one mail received;
- allowed doubles: doubled keys of which at least one request was sent
  without idempotency because Redis was unreachable and
  IDEMPOTENCY_FAILURE_MODE=open (the service logs each such request with its
  request id; the load generator's request id is "<key>.<seq>"). Any other
  double breaks the invariant;
- unknown: keys answered 500 "outcome unknown" (the mail may be out): reported,
  never counted as lost.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field

from .load import Answer

_KEY_IN_SUBJECT = re.compile(r"\[([A-Za-z0-9-]+)\]")
# The service's log messages for a request it sent without idempotency (docs/DESIGN.md, store failures).
UNGUARDED_LOG_MESSAGES = (
    "idempotency store unavailable; sending without idempotency (IDEMPOTENCY_FAILURE_MODE=open)",
    "idempotency store unavailable at the commit point; sending anyway (IDEMPOTENCY_FAILURE_MODE=open)",
)


def mails_by_key(messages) -> collections.Counter:
    """How many mails the SMTP server accepted for each key."""
    counts: collections.Counter = collections.Counter()
    for received in messages:
        match = _KEY_IN_SUBJECT.search(str(received.message.get("Subject", "")))
        counts[match.group(1) if match else "(no key)"] += 1
    return counts


def unguarded_keys(log_text: str) -> set[str]:
    """Keys of which a request was sent without idempotency, from the service's JSON log lines."""
    keys = set()
    for line in log_text.splitlines():
        if "IDEMPOTENCY_FAILURE_MODE=open" not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") in UNGUARDED_LOG_MESSAGES and entry.get("request_id"):
            keys.add(entry["request_id"].rsplit(".", 1)[0])
    return keys


@dataclass
class Tally:
    keys: int = 0
    mails: int = 0
    ok_keys: int = 0
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    allowed_doubles: list[str] = field(default_factory=list)  # doubled, with an unguarded send (open mode)
    unexpected_doubles: list[str] = field(default_factory=list)
    extra_mails_allowed: int = 0  # mails beyond the first for the allowed doubles
    unknown_keys: int = 0
    unknown_delivered: int = 0  # of those, the server has the mail
    unguarded_keys: int = 0


def tally(answers: list[Answer], mails: collections.Counter, unguarded: set[str]) -> Tally:
    keys = {a.key for a in answers}
    ok_keys = {a.key for a in answers if a.ok}
    unknown_keys = {a.key for a in answers if a.unknown} - ok_keys
    doubled = sorted(k for k in keys if mails[k] > 1)
    allowed = [k for k in doubled if k in unguarded]
    return Tally(
        keys=len(keys),
        mails=sum(mails[k] for k in keys),
        ok_keys=len(ok_keys),
        lost=sorted(k for k in ok_keys if mails[k] == 0),
        doubled=doubled,
        allowed_doubles=allowed,
        unexpected_doubles=[k for k in doubled if k not in unguarded],
        extra_mails_allowed=sum(mails[k] - 1 for k in allowed),
        unknown_keys=len(unknown_keys),
        unknown_delivered=sum(1 for k in unknown_keys if mails[k] > 0),
        unguarded_keys=len(keys & unguarded),
    )
