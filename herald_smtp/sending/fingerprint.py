"""The idempotency fingerprint: a hash of the effective message.

The same key with another fingerprint is a conflict (409), never a second mail.
"""

from __future__ import annotations

import hashlib
import json

from .request import SendRequest


def fingerprint(request: SendRequest) -> str:
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
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
