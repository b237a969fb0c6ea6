"""The contract with Herald: exactly what Herald's email channel sends, and what it can understand back.

Herald (provider-kit's HTTP provider) posts the six fields below, with subject
and body already rendered and the challenge id as the idempotency key in both
the body and the Idempotency-Key header; no params, template or
timeout_seconds. It decides on `ok`, keeps `message_id`, maps a fixed set of
error codes and treats any other code as send_failed; it ignores fields it does
not know (`relay_queue_id`, `provider`). It never retries on its own.

The app runs in-process (Flask test client) and sends through the real
STARTTLS + AUTH SMTP server of conftest.
"""

from __future__ import annotations

import re

from herald_smtp.config import settings_from
from herald_smtp.outcomes import Outcome
from tests.support.client import send
from tests.support.scripted_server import ScriptedServer

# A challenge id: "ch_" and 22 base64url characters.
CHALLENGE_ID = "ch_3q2-7wAbCdEfGhIjKlMnOp"

HERALD_REQUEST = {
    "channel": "email",
    "to": "li.wei@example.com",
    "subject": "您的验证码",
    "body": "您的验证码是 482913，10 分钟内有效。",
    "locale": "zh-CN",
    "idempotency_key": CHALLENGE_ID,
}
HERALD_HEADERS = {"Idempotency-Key": CHALLENGE_ID}

# The fields Herald reads from a 200; any other field it ignores.
HERALD_READS_ON_SUCCESS = {"ok", "message_id"}

# The error codes Herald maps to its own errors; any other code it treats as send_failed.
HERALD_MAPS = {"rate_limited", "invalid_destination", "timeout", "unauthorized", "provider_down",
               "idempotency_conflict"}
# Codes Herald does not map: it reads them as send_failed, which is what they mean to it.
READ_AS_SEND_FAILED = {"send_failed", "invalid_request", "internal_error", "not_found", "method_not_allowed"}


def test_what_herald_sends_is_sent_once_and_every_answer_is_one_herald_understands(client, smtp):
    assert re.fullmatch(r"ch_[A-Za-z0-9_-]{22}", CHALLENGE_ID)
    assert set(HERALD_REQUEST) == {"channel", "to", "subject", "body", "locale", "idempotency_key"}

    response = send(client, HERALD_REQUEST, HERALD_HEADERS)

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["ok"] is True
    assert body["provider"] == "smtp"
    assert "Idempotent-Replayed" not in response.headers
    [mail] = smtp.wait_for(1)
    assert mail.rcpt_tos == [HERALD_REQUEST["to"]]
    assert body["message_id"] == mail.message["Message-ID"].strip().removeprefix("<").removesuffix(">")
    assert mail.message["Subject"] == HERALD_REQUEST["subject"]
    assert mail.message.get_content().rstrip("\n") == HERALD_REQUEST["body"]

    again = send(client, HERALD_REQUEST, HERALD_HEADERS)

    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == body
    # The send is synchronous: a second mail would have been accepted before the answer.
    assert len(smtp.messages) == 1

    # Every error_code the service can answer is one Herald maps or one it reads as send_failed.
    produced = {outcome.error_code for outcome in Outcome if outcome.error_code is not None}

    assert produced <= HERALD_MAPS | READ_AS_SEND_FAILED, produced - HERALD_MAPS - READ_AS_SEND_FAILED
    # herald-smtp never answers `timeout`: an SMTP timeout is send_failed with retryable true.
    assert produced & HERALD_MAPS == {"rate_limited", "invalid_destination", "unauthorized", "provider_down",
                                      "idempotency_conflict"}


def test_a_200_naming_the_relays_queue_id_still_reads_as_herald_expects(make_client):
    # A relay that names its queue id adds `relay_queue_id` to the 200: one more field Herald does not read.
    with ScriptedServer(script={"dot": [b"250 2.0.0 Ok: queued as 4XyZ1234AbC\r\n"]}) as relay:
        client = make_client(settings_from({"SMTP_HOST": relay.host, "SMTP_PORT": str(relay.port),
                                            "SMTP_FROM": "noreply@herald.test", "SMTP_USE_STARTTLS": "false"}))
        response = send(client, HERALD_REQUEST, HERALD_HEADERS)

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["relay_queue_id"] == "4XyZ1234AbC"
    # What Herald reads is there and typed as before; the rest it ignores.
    assert body["ok"] is True and isinstance(body["message_id"], str) and body["message_id"]
    assert set(body) - HERALD_READS_ON_SUCCESS == {"provider", "relay_queue_id"}
