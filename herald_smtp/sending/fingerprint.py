"""The idempotency fingerprint: an HMAC of the effective message, keyed by IDEMPOTENCY_SECRET.

The same key with another fingerprint is a conflict (409), never a second mail.
The payload holds the one-time code, and the fingerprint is stored beside the
key: unkeyed, whoever can read the store and knows the recipient could try
all million 6-digit codes against it. Keyed by a secret shared by the
replicas, it gives nothing away. Without IDEMPOTENCY_SECRET it falls back to
a plain SHA-256 (startup warns when the store is shared).

What it covers is every field of SendRequest (dataclasses.fields) but the two
in NOT_FINGERPRINTED, so a field added to the request is covered without
anyone remembering to list it here: two requests that differ in it cannot
replay each other. The canonical form is the one of the first version
(`channel` and the fields by name, sorted), so today's fingerprints did not
change when it stopped being a hand-picked list. Adding a field does change
every fingerprint: a retry in flight across that deploy answers 409.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json

from ..addresses import Mailbox
from .request import SendRequest

# The only fields left out, because they do not change the mail: the idempotency key names the request (it is the
# record's own key), and timeout_seconds is how long the caller waits, so a retry with a shorter wait is a replay.
NOT_FINGERPRINTED = ("idempotency_key", "timeout_seconds")


_FINGERPRINTED = tuple(field.name for field in dataclasses.fields(SendRequest) if field.name not in NOT_FINGERPRINTED)


def fingerprint(request: SendRequest, secret: str = "") -> str:
    fields = {name: getattr(request, name) for name in _FINGERPRINTED}
    # "channel" is not a field (always email) but was in the first version's form; kept so fingerprints stay the same.
    canonical = json.dumps({"channel": "email", **fields}, sort_keys=True, ensure_ascii=False,
                           default=_json_value).encode("utf-8")
    if secret:
        return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()
    return hashlib.sha256(canonical).hexdigest()


def _json_value(value):
    if isinstance(value, Mailbox):
        return str(value)  # the envelope address: what the mailer sends to (IDNA domain, as the To header)
    # A new field of another type needs a stable text form here: repr() could differ between processes.
    raise TypeError(f"no fingerprint form for {type(value).__name__}; add one in sending/fingerprint.py")
