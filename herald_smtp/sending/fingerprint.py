"""The idempotency fingerprint: an HMAC of the effective message, keyed by IDEMPOTENCY_SECRET.

The same key with another fingerprint is a conflict (409), never a second mail.
The payload holds the one-time code, and the fingerprint is stored beside the
key: unkeyed, whoever can read the store and knows the recipient could try
all million 6-digit codes against it. Keyed by a secret shared by the
replicas, it gives nothing away. Without IDEMPOTENCY_SECRET it falls back to
a plain SHA-256 (startup warns when the store is shared).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from .request import SendRequest


def fingerprint(request: SendRequest, secret: str = "") -> str:
    canonical = json.dumps(
        {
            "channel": "email",
            "to": str(request.to),
            "subject": request.subject,
            "body": request.body,
            "params": request.params,
            "template": request.template,
            "locale": request.locale,
        },
        sort_keys=True,
        ensure_ascii=False,
    ).encode("utf-8")
    if secret:
        return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()
    return hashlib.sha256(canonical).hexdigest()
