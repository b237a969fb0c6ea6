"""MailWriter writes the same bytes the email package would (EmailMessage + as_bytes).

The reference is build_message(...).as_bytes(policy=email.policy.SMTP, or SMTPUTF8 for a mail that
needs it): what herald-smtp sent before MailWriter existed. Generated requests cover both MailWriter's
direct path and its fallbacks; the named cases pin the shapes the other tests rely on (RFC 2047
subjects, non-ASCII bodies, dot-stuffing input, long lines, local parts with specials, international names).
"""

from __future__ import annotations

import dataclasses
import email.policy
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st

from herald_smtp.addresses import InvalidAddress
from herald_smtp.config import settings_from
from herald_smtp.sending.message import MailWriter, _header_date, build_message, now_header_date
from herald_smtp.sending.request import InvalidRequest, SendRequest, parse_send_request

DATE = "Tue, 01 Dec 2026 12:00:00 +0000"
MESSAGE_ID = "0123456789abcdef0123456789abcdef@herald.test"
GENERATED = hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SETTINGS = {
    "plain": settings_from({"SMTP_FROM": "noreply@herald.test"}),
    "named": settings_from({"SMTP_FROM": "noreply@herald.test", "SMTP_FROM_NAME": "Herald Test"}),
    "non-ascii name": settings_from({"SMTP_FROM": "noreply@herald.test", "SMTP_FROM_NAME": "Hérald, Inc. 认证"}),
}


def _reference(request: SendRequest, settings) -> bytes:
    policy = email.policy.SMTP if str(request.to).isascii() else email.policy.SMTPUTF8
    return build_message(request, settings, MESSAGE_ID, DATE).as_bytes(policy=policy)


def _written(request: SendRequest, settings) -> bytes:
    mail = MailWriter(settings).build(request, MESSAGE_ID, DATE)
    assert mail.message_id == MESSAGE_ID
    return mail.payload


def _request(to: str, subject: str, body: str) -> SendRequest:
    # Through the real request parser: only what a caller can get accepted is compared.
    return parse_send_request(json.dumps({"to": to, "subject": subject, "body": body}).encode(), None)


CASES = {
    "short ascii": ("user@example.com", "Your code", "Your code is 123456"),
    "rfc 2047 subject": ("user@example.com", "您的验证码", "Code 123456"),
    "long ascii subject": ("user@example.com", "Your verification code for the account " * 4, "Code 123456"),
    "subject with double spaces": ("user@example.com", "Your  code ", "Code"),
    "long plain subject": ("user@example.com", ("word " * 30).strip(), "Code"),
    "one long word subject": ("user@example.com", "x" * 100, "Code"),
    "subject of 69 characters": ("user@example.com", "y" * 69, "Code"),
    "subject of 70 characters": ("user@example.com", "y" * 70, "Code"),
    "subject with spaces around": ("user@example.com", " Your  code ", "Code"),
    "body line of 78 characters": ("user@example.com", "Code", "z" * 78),
    "body line of 79 characters": ("user@example.com", "Code", "z" * 79),
    "non-ascii body": ("user@example.com", "Code", "Ihr Bestätigungscode lautet 123456.\nGrüße"),
    "long non-ascii body": ("user@example.com", "Code", "é" * 500),
    "lines starting with dots": ("user@example.com", "Code", ".\n..\n.line\nend."),
    "long ascii line (qp)": ("user@example.com", "Code", "x" * 200 + "\nshort"),
    "long ascii line with specials": ("user@example.com", "Code", "=" * 120),
    "crlf and cr in body": ("user@example.com", "Code", "a\r\nb\rc\n\nd"),
    "specials in the local part": ("o'brien+tag=1@example.com", "Code", "Code"),
    "international domain": ("user@bücher.example", "Code", "Code"),
    "smtputf8 local part": ("josé@example.com", "Código", "Tu código: 123456"),
    "long address": ("a" * 64 + "@" + "b" * 60 + ".example.com", "Code", "Code"),
}


@pytest.mark.parametrize("settings_name", SETTINGS)
@pytest.mark.parametrize("case", CASES)
def test_named_cases_match_the_email_package(case, settings_name):
    request = _request(*CASES[case])
    settings = SETTINGS[settings_name]
    assert _written(request, settings) == _reference(request, settings)


def test_the_direct_path_is_taken_for_a_plain_mail():
    # The writer really writes: its head is not the email package's object (a stub returning the
    # reference would pass the equality tests, not this one).
    writer = MailWriter(SETTINGS["named"])
    request = _request(*CASES["short ascii"])
    payload = writer.build(request, MESSAGE_ID, DATE).payload
    assert payload == (
        b"From: Herald Test <noreply@herald.test>\r\n"
        b"To: user@example.com\r\n"
        b"Subject: Your code\r\n"
        b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
        b"Message-ID: <0123456789abcdef0123456789abcdef@herald.test>\r\n"
        b"Auto-Submitted: auto-generated\r\n"
        b"X-Auto-Response-Suppress: All\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"MIME-Version: 1.0\r\n"
        b"\r\n"
        b"Your code is 123456\r\n"
    )


def test_the_date_defaults_to_now_in_the_header_form():
    mail = MailWriter(SETTINGS["plain"]).build(_request(*CASES["short ascii"]), MESSAGE_ID)
    date_line = next(line for line in mail.payload.split(b"\r\n") if line.startswith(b"Date: "))
    assert date_line.decode()[len("Date: "):][:16] == now_header_date()[:16]  # same day and hour
    assert date_line.endswith(b"+0000")


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
_ascii = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=300)
_local = st.one_of(st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,40}", fullmatch=True),
                   st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x2FF), min_size=1, max_size=10))
_domain = st.sampled_from(["example.com", "bücher.example", "x" * 60 + ".example.org", "例え.jp"])


@GENERATED
@given(local=_local, domain=_domain, subject=st.one_of(_text, _ascii), body=st.one_of(_text, _ascii),
       settings_name=st.sampled_from(sorted(SETTINGS)))
def test_generated_requests_match_the_email_package(local, domain, subject, body, settings_name):
    try:
        request = _request(f"{local}@{domain}", subject, body)
    except (InvalidRequest, InvalidAddress):
        assume(False)  # refused at the door, never built (hypothesis fails if it filters too much)
    settings = SETTINGS[settings_name]
    assert _written(request, settings) == _reference(request, settings)



# --- a fallback relay with its own `from` / `from_name` (SMTP_FALLBACK_URLS): its own From header

RELAYED = settings_from({"SMTP_FROM": "noreply@herald.test", "SMTP_FROM_NAME": "Herald Test",
                         "SMTP_FALLBACK_URLS": "smtp://a.example?from=alerts@fallback.test&from_name=Fallback%20认证,"
                                               "smtp://b.example"})


@pytest.mark.parametrize("case", ["short ascii", "rfc 2047 subject", "body line of 79 characters",
                                  "smtputf8 local part", "international domain"])
def test_each_relay_gets_the_from_header_of_its_own_sender(case):
    to, subject, body = CASES[case]
    request = _request(to, subject, body)
    mail = MailWriter(RELAYED).build(request, MESSAGE_ID, DATE)
    primary, own, inherited = RELAYED.relays
    assert mail.payload == mail.payload_for(0) == mail.payload_for(2) == _reference(request, RELAYED)
    as_fallback = dataclasses.replace(RELAYED, smtp_from=own.from_address, smtp_from_name=own.from_name)
    assert mail.payload_for(1) == _reference(request, as_fallback)


def test_relays_with_the_same_sender_share_one_payload():
    settings = settings_from({"SMTP_FROM": "noreply@herald.test", "SMTP_FALLBACK_URLS": "smtp://a.example"})
    mail = MailWriter(settings).build(_request(*CASES["short ascii"]), MESSAGE_ID, DATE)
    assert mail.from_lines == () and mail.payload_for(1) is mail.payload


@pytest.mark.parametrize("case", ["short ascii", "long ascii line (qp)", "smtputf8 local part"])
def test_every_mail_says_it_is_automatic(case):
    """RFC 3834's Auto-Submitted and Exchange's X-Auto-Response-Suppress, once each, on the direct path, the email
    package's and the SMTPUTF8 one; no List-Unsubscribe (a login code is no subscription)."""
    payload = MailWriter(SETTINGS["named"]).build(_request(*CASES[case]), MESSAGE_ID, DATE).payload
    head = payload.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head.count(b"Auto-Submitted: auto-generated") == 1
    assert head.count(b"X-Auto-Response-Suppress: All") == 1
    assert not any(line.lower().startswith(b"list-unsubscribe") for line in head)


@given(st.integers(min_value=0, max_value=4_102_444_800))
def test_the_date_header_made_once_a_second_is_the_email_package_s(second):
    from datetime import datetime, timezone
    from email.utils import format_datetime

    assert _header_date(second) == format_datetime(datetime.fromtimestamp(second, timezone.utc))
