"""What the load sends: Herald's request body, with an idempotency key in the body and the header.

Herald sends `channel`, `to`, `subject`, `body`, `locale` and `idempotency_key`
(docs/API.md); the same key also goes in the Idempotency-Key header. A fresh
key per request makes every request a real send; a replay sends a finished
key again with exactly the same body.
"""

from __future__ import annotations

import json

API_KEY = "bench-api-key-0123456789abcdef"
SMTP_USER = "bench-user"
SMTP_PASSWORD = "bench-smtp-pa55word"  # a loopback server's throwaway credential
SENDER = "noreply@herald.test"
RECIPIENT = "someone@example.com"
SUBJECT = "Your code"
TEXT = "Your code is 482913. It expires in 10 minutes."
PATH = "/v1/send"


def body(key: str) -> bytes:
    return json.dumps({"channel": "email", "to": RECIPIENT, "subject": SUBJECT, "body": TEXT, "locale": "en",
                       "idempotency_key": key}, separators=(",", ":")).encode()


def headers(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-API-Key": API_KEY, "Idempotency-Key": key}


def fresh_key(prefix: str, worker: int, counter: int) -> str:
    """Unique per run (prefix), worker and request: the same scheme as the wrk script's."""
    return f"{prefix}-{worker}-{counter}"


def replay_key(prefix: str, index: int) -> str:
    return f"{prefix}-r{index}"
