"""Hostile request bodies: RFC 2047 encoded-words, header injection, odd values; none may crash a worker.

Against the real STARTTLS + AUTH SMTP server of conftest: a refusal sends
nothing, and an accepted mail carries exactly our headers, on lines of at
most 998 characters (RFC 5322).
"""

from __future__ import annotations

import pytest

from tests.support.client import assert_error, send

# The headers build_message writes; anything else in a received mail was injected.
OUR_HEADERS = {"from", "to", "subject", "date", "message-id", "auto-submitted", "x-auto-response-suppress",
               "content-type", "content-transfer-encoding", "mime-version"}

INJECTING_SUBJECTS = [
    "=?utf-8?q?Your_code=0D=0AReply-To:_attacker@evil.example?=",
    "=?UTF-8?B?WW91ciBjb2RlDQpSZXBseS1UbzogYXR0YWNrZXJAZXZpbC5leGFtcGxl?=",  # the same, base64
    "Code =?utf-8*en?Q?x=0AReply-To:_attacker@evil.example?= here",  # RFC 2231 language tag, mid-text
    "=?utf-8?q?harmless?=",  # decoded or not depending on the Python version: refused alike
]


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def assert_only_our_headers(mail) -> None:
    names = {name.lower() for name in mail.message.keys()}
    assert names <= OUR_HEADERS, names - OUR_HEADERS
    assert "reply-to" not in names and b"Reply-To" not in mail.raw
    assert all(len(line) <= 998 for line in mail.raw.split(b"\r\n"))


@pytest.mark.parametrize("subject", INJECTING_SUBJECTS)
def test_an_encoded_word_subject_is_refused_and_nothing_is_sent(client, smtp, subject):
    response = send(client, {"to": "alice@example.com", "subject": subject})
    for mail in smtp.messages:  # none expected; should one slip through, it must still be clean
        assert_only_our_headers(mail)
    assert_error(response, 400, "invalid_request", "subject must not contain an RFC 2047 encoded-word")
    assert smtp.messages == []


@pytest.mark.parametrize("subject", ["Code = 42? Yes", "a=?b", "what?= now", "=?x"])
def test_equals_and_question_marks_that_are_no_encoded_word_arrive_verbatim(client, smtp, subject):
    response = send(client, {"to": "alice@example.com", "subject": subject})
    assert response.status_code == 200, response.get_json()
    [mail] = smtp.wait_for(1)
    assert mail.message["Subject"] == subject
    assert_only_our_headers(mail)


ENCODED_RECIPIENTS = [
    "=?utf-8?q?ceo=40bank=2Ecom=2C_x?=@evil.example",  # To: would show ceo@bank.com, x@evil.example
    "=?utf-8?q?ceo=40bank=2Ecom=0D=0Ax?=@evil.example",  # a line break once decoded
]


@pytest.mark.parametrize("to", ENCODED_RECIPIENTS)
def test_an_encoded_word_in_to_is_refused_and_nothing_is_sent(client, smtp, to):
    response = send(client, {"to": to})
    assert_error(response, 400, "invalid_destination",
                 "to is not a valid email address: an address must not contain an RFC 2047 encoded-word")
    assert smtp.messages == []


HOSTILE_BODIES = [
    {"to": "a@example.com", "subject": "x" * 60000},  # one long word: must fold, not exceed 998
    {"to": "a@example.com", "subject": "é" * 5000},
    {"to": "a@example.com", "subject": "Code\u2028Bcc: x@evil.example"},
    {"to": "a@example.com", "subject": "Code\x00"},
    {"to": "a@example.com", "subject": " "},
    {"to": "a@example.com", "subject": "\ud800"},
    {"to": "a@example.com", "subject": ["list"]},
    {"to": "a@example.com", "params": {"code": "=?utf-8?q?x=0D=0ABcc:_x@evil.example?="}},  # body text: harmless
    {"to": "a@example.com", "params": {"code": "1\r\n.\r\nMAIL FROM:<x@evil.example>"}},
    {"to": "a@example.com", "body": "." * 5000 + "\n.\n" + "y" * 5000},
    {"to": "a@example.com", "template": "\x00" * 10, "locale": "=?utf-8?q?=0D=0A?="},
    {"to": "a@example.com", "params": {"=?utf-8?q?=0D=0A?=": "v", "code": "1"}},
    {"to": "a@example.com", "idempotency_key": "=?utf-8?q?=0D=0A?="},
    {"to": "a@example.com", "timeout_seconds": 10 ** 400},
    {"to": "a@example.com", "timeout_seconds": 1e308},
    {"to": "a@example.com", "channel": "=?utf-8?q?=0D=0A?="},
    {"to": "=?utf-8?b?YUBiLmM=?=@example.com"},
    {"to": "=?utf-8?q?=C3=A9?=@example.com"},
    {"to": "=?utf-8?q?=0D=0A.=0D=0A?=@example.com"},
    {"to": "a=?x?=b@example.com"},
    {"to": "a@=?utf-8?q?x?=.example.com"},
    {"to": "a@example.com\r\nBcc: x@evil.example"},
    {"to": "a@example.com, b@evil.example"},
    {"to": "Name <a@example.com>"},
    {"to": "a" * 64 + "@" + ("b" * 63 + ".") * 3 + "com"},
    {"to": ["a@example.com"]},
    {"to": "a@example.com", "params": "code"},
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=[f"body{i}" for i in range(len(HOSTILE_BODIES))])
def test_no_hostile_body_crashes_a_worker_or_injects_a_header(client, smtp, body):
    response = send(client, body)
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    assert response.is_json and response.get_json()["ok"] is (response.status_code == 200)
    if response.status_code == 400:
        assert smtp.messages == []
        return
    [mail] = smtp.wait_for(1)
    assert mail.rcpt_tos == [body["to"]]
    assert_only_our_headers(mail)
