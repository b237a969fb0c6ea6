"""The one address parser: request `to`, SMTP_FROM, and what reaches the SMTP server."""

from __future__ import annotations

import logging

import pytest

from herald_smtp.addresses import (InvalidAddress, Mailbox, aligned, check_display_name, mask_addresses, mask_email,
                                   organisational_domain, parse_address)
from herald_smtp.config import ConfigError, settings_from
from tests.support.client import assert_error, send

BAD_RECIPIENTS = [
    "..@example.com",
    ".a@example.com",
    "a.@example.com",
    "a..b@example.com",
    "a@b..example.com",
    "a@example..com",
    "a@example.com.",
    "a@example.local",
    "a@mail.localhost",
    "a@example.invalid",
    '"quoted"@example.com',
    "a@[192.0.2.1]",
    "a@@example.com",
    "@example.com",
    "a@",
    "x" * 65 + "@example.com",
    "é" * 33 + "@example.com",  # 33 characters, 66 bytes in UTF-8: the limit is 64 octets
    "a@例子.local",  # internationalised, and special-use all the same
    "a\u200b@example.com",  # an invisible character
    "a@☃.net",  # a character IDNA does not allow
    # RFC 2047 encoded-words: the email package decoded them into the To header (other recipients, a line break)
    "=?utf-8?q?ceo=40bank=2Ecom=2C_x?=@evil.example",
    "=?utf-8?q?ceo=40bank=2Ecom=0D=0Ax?=@evil.example",
    "a=?x?=b@example.com",
]


@pytest.mark.parametrize("to", BAD_RECIPIENTS)
def test_invalid_recipient_is_400_with_a_reason_and_nothing_is_sent_or_kept(client, smtp, to, caplog):
    caplog.set_level(logging.WARNING, logger="herald_smtp.send")
    body = assert_error(send(client, {"to": to, "idempotency_key": "k-addr"}), 400, "invalid_destination",
                        "to is not a valid email address: ")
    assert len(body["error_message"]) > len("to is not a valid email address: ") + 10  # says what is wrong
    assert smtp.messages == []
    [line] = [r for r in caplog.records if r.getMessage() == "send_failed"]
    assert line.error_code == "invalid_destination"
    # Nothing was recorded under the key: the corrected request sends.
    assert send(client, {"to": "fixed@example.com", "idempotency_key": "k-addr"}).status_code == 200
    assert [m.rcpt_tos for m in smtp.wait_for(1)] == [["fixed@example.com"]]


@pytest.mark.parametrize("to", ["a+tag@sub.example.co.uk", "o'brien@example.com", "x_y-z@example.org",
                                "staging@herald.test", "A.B@example.com"])
def test_valid_recipients_reach_the_server_as_given(client, smtp, to):
    response = send(client, {"to": to})
    assert response.status_code == 200, response.get_json()
    [mail] = smtp.wait_for(1)
    assert mail.rcpt_tos == [to]
    assert mail.message["To"] == to


@pytest.mark.parametrize("to, envelope", [("josé@example.com", "josé@example.com"),
                                          ("user@例子.中国", "user@xn--fsqu00a.xn--fiqs8s")])
def test_international_recipients_are_accepted(client, smtp, to, envelope):
    # Once refused as invalid; tests/test_international.py has the whole behaviour (SMTPUTF8 or not).
    response = send(client, {"to": to})
    assert response.status_code == 200, response.get_json()
    [mail] = smtp.wait_for(1)
    assert mail.rcpt_tos == [envelope]
    assert mail.message["To"] == envelope


def test_the_address_reaches_the_server_spelled_as_given(client, smtp):
    assert send(client, {"to": "Bob@Example.COM"}).status_code == 200
    [mail] = smtp.wait_for(1)
    assert mail.rcpt_tos == ["Bob@Example.COM"] and mail.message["To"] == "Bob@Example.COM"


@pytest.mark.parametrize("sender", ["a@b..c", "noreply@example.local", "..@example.com", "noreply",
                                    "=?utf-8?q?noreply=40bank=2Ecom?=@example.com"])
def test_a_bad_smtp_from_stops_startup_naming_it(sender):
    with pytest.raises(ConfigError) as err:
        settings_from({"SMTP_FROM": sender})
    message = str(err.value)
    assert message.startswith("SMTP_FROM: expected an ASCII email address like noreply@example.com (")
    assert "\n" not in message


def test_parse_address_splits_and_explains():
    assert parse_address("Li.Wei@Mail.Example.com") == Mailbox("Li.Wei", "Mail.Example.com")
    assert str(parse_address("a@example.com")) == "a@example.com"
    with pytest.raises(InvalidAddress, match="period"):
        parse_address("a..b@example.com")


def test_parse_address_gives_the_envelope_form_and_whether_smtputf8_is_needed():
    idn = parse_address("user@例子.中国", international=True)
    assert idn == Mailbox("user", "例子.中国", "xn--fsqu00a.xn--fiqs8s")
    assert str(idn) == "user@xn--fsqu00a.xn--fiqs8s" and not idn.smtputf8
    utf8 = parse_address("josé@Example.COM", international=True)
    assert utf8 == Mailbox("josé", "Example.COM") and utf8.smtputf8 and str(utf8) == "josé@Example.COM"
    # An ASCII address is exactly as given, in every field and in str() (what the fingerprint hashes).
    ascii_ = parse_address("Postmaster@Mail.Example.com", international=True)
    assert (ascii_.local, ascii_.domain, ascii_.ascii_domain) == ("Postmaster", "Mail.Example.com", "Mail.Example.com")
    assert str(ascii_) == "Postmaster@Mail.Example.com" and not ascii_.smtputf8
    with pytest.raises(ValueError, match="ascii_domain"):
        Mailbox("user", "例子.中国")


@pytest.mark.parametrize("text", ["josé@example.com", "user@例子.中国"])
def test_parse_address_is_ascii_only_unless_asked(text):
    with pytest.raises(InvalidAddress, match="^only ASCII addresses are supported here"):
        parse_address(text)


def test_parse_address_counts_the_local_part_in_utf8_octets():
    assert parse_address("李" * 21 + "@example.com", international=True).local == "李" * 21  # 63 bytes
    with pytest.raises(InvalidAddress, match="^the part before the @ is 66 bytes long in UTF-8; at most 64"):
        parse_address("李" * 22 + "@example.com", international=True)


def test_parse_address_refuses_encoded_words_with_the_reason():
    with pytest.raises(InvalidAddress) as info:
        parse_address("=?utf-8?q?ceo=40bank=2Ecom?=@evil.example")
    assert str(info.value) == "an address must not contain an RFC 2047 encoded-word (=?...?=)"
    # "=" and "?" alone are atext: such addresses stay valid.
    assert parse_address("a=b?c@example.com") == Mailbox("a=b?c", "example.com")


@pytest.mark.parametrize("name, reason", [("N" * 201, "at most 200"), ("Herald\r\nBcc: x@evil.example", "control"),
                                          ("Herald\u2028Team", "control"), ("=?utf-8?q?Herald?=", "encoded-word")])
def test_check_display_name_refuses_what_the_from_line_cannot_hold(name, reason):
    with pytest.raises(InvalidAddress, match=reason):
        check_display_name(name)


def test_check_display_name_returns_a_usable_name_unchanged():
    assert check_display_name("Herald, Inc. (Ünïcode) = ? ok") == "Herald, Inc. (Ünïcode) = ? ok"
    assert check_display_name("N" * 200) == "N" * 200


def test_masking_keeps_the_first_letter_and_the_domain():
    assert mask_email("alice@example.com") == "a***@example.com"
    assert mask_email("no-at-sign") == "***"
    assert mask_addresses("550 <alice@example.com>: no such user") == "550 <a***@example.com>: no such user"


@pytest.mark.parametrize(("domain", "organisational"), [
    ("example.com", "example.com"), ("mail.example.com", "example.com"), ("a.b.example.com.", "example.com"),
    ("example.co.uk", "example.co.uk"), ("mail.example.co.uk", "example.co.uk"),
    ("Mail.Example.COM.AU", "example.com.au"),
    ("herald.test", "herald.test"), ("localhost", "localhost"),
])
def test_the_organisational_domain(domain, organisational):
    assert organisational_domain(domain) == organisational


def test_alignment_is_relaxed():
    assert aligned("mail.example.com", "example.com") and aligned("bounces.example.com", "news.example.com")
    assert not aligned("example.com", "example.net") and not aligned("example.co.uk", "other.co.uk")
