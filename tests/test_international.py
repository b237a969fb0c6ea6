"""International addresses: IDNA domains, SMTPUTF8 local parts, and what stays refused.

Every test sends through the app to a real aiosmtpd server (one that offers
SMTPUTF8, or one that does not) and checks what it received: the envelope,
the MAIL FROM parameters, the raw message and every MAIL/RCPT/RSET command.
"""

from __future__ import annotations

import logging

import pytest

from herald_smtp.config import ConfigError, settings_from
from tests.support.client import assert_error, send, smtp_env

IDN = "user@例子.中国"
IDN_ACE = "user@xn--fsqu00a.xn--fiqs8s"
NO_SMTPUTF8 = "needs SMTPUTF8 (RFC 6531), and the SMTP server does not offer SMTPUTF8; nothing was sent"


@pytest.fixture
def service(make_client):
    """A client for `server`, with extra environment variables."""

    def make(server, **env):
        return make_client(settings_from(smtp_env(server) | {k.upper(): str(v) for k, v in env.items()}))

    return make


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def mails_from(server) -> list[str]:
    return [arg for verb, arg in server.commands if verb == "MAIL"]


# --- internationalised domains: IDNA in the envelope and the To header, no SMTPUTF8 needed


@pytest.mark.parametrize("smtputf8", [True, False], ids=["server-with-smtputf8", "server-without"])
def test_an_idn_domain_goes_out_in_punycode(server_factory, service, smtputf8):
    server = server_factory(smtputf8=smtputf8)
    response = send(service(server), {"to": IDN, "params": {"code": "123456"}})
    assert response.status_code == 200, response.get_json()
    [mail] = server.wait_for(1)
    assert mail.rcpt_tos == [IDN_ACE]
    assert mail.message["To"] == IDN_ACE
    assert b"\r\nTo: " + IDN_ACE.encode() + b"\r\n" in header_block(mail.raw)
    # An ASCII envelope: no SMTPUTF8 asked for, and the mail is 7-bit as before.
    assert mail.mail_options == [] and not mail.smtp_utf8
    assert mail.raw.isascii()
    assert "123456" in mail.message.get_content()


@pytest.mark.parametrize("to, envelope", [
    ("User@例子。中国", "User@xn--fsqu00a.xn--fiqs8s"),  # ideographic full stop; the local part keeps its case
    ("a@例子．中国", "a@xn--fsqu00a.xn--fiqs8s"),  # fullwidth full stop
    ("a@ß.de", "a@xn--zca.de"),  # IDNA 2008: ß stays ß (IDNA 2003 would have made it "ss.de")
    ("a@Bücher.example", "a@xn--bcher-kva.example"),  # UTS #46 lower-cases before the conversion
    ("a@XN--FSQU00A.xn--fiqs8s", "a@XN--FSQU00A.xn--fiqs8s"),  # already ASCII: sent as spelled
])
def test_idn_spellings_reach_the_envelope_in_their_idna_form(client, smtp, to, envelope):
    assert send(client, {"to": to}).status_code == 200
    [mail] = smtp.wait_for(1)
    assert mail.rcpt_tos == [envelope]
    assert mail.message["To"] == envelope


def test_the_same_idn_address_spelled_twice_is_one_mail_under_one_key(client, smtp):
    first = send(client, {"to": IDN, "idempotency_key": "k-idn"})
    again = send(client, {"to": "user@例子。中国", "idempotency_key": "k-idn"})  # the same mailbox
    assert first.status_code == again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == first.get_json()
    assert [m.rcpt_tos for m in smtp.wait_for(1)] == [[IDN_ACE]]


# --- non-ASCII local parts: SMTPUTF8 when the server offers it


@pytest.mark.parametrize("to, envelope", [
    ("josé@example.com", "josé@example.com"),
    ("李@example.com", "李@example.com"),
    ("李@例子.中国", "李@xn--fsqu00a.xn--fiqs8s"),  # both at once: UTF-8 local part, IDNA domain
    ("jose\u0301@example.com", "josé@example.com"),  # decomposed é: sent NFC-normalised (RFC 6532 3.1)
    ("é" * 32 + "@example.com", "é" * 32 + "@example.com"),  # 64 bytes in UTF-8: the bound
])
def test_a_utf8_local_part_is_sent_with_smtputf8(server_factory, service, to, envelope):
    server = server_factory(smtputf8=True)
    response = send(service(server), {"to": to, "subject": "你的验证码", "params": {"code": "654321"}})
    assert response.status_code == 200, response.get_json()
    [mail] = server.wait_for(1)
    assert mail.rcpt_tos == [envelope]
    assert mail.mail_from == "noreply@herald.test"
    assert "SMTPUTF8" in mail.mail_options and mail.smtp_utf8
    assert "BODY=8BITMIME" not in mail.mail_options  # the body is base64 or 7-bit: no 8BITMIME needed
    [mail_command] = mails_from(server)
    assert mail_command == "FROM:<noreply@herald.test> SMTPUTF8"
    # The To header is UTF-8 (RFC 6532), not an encoded-word, and decodes to the envelope address.
    assert b"\r\nTo: " + envelope.encode("utf-8") + b"\r\n" in header_block(mail.raw)
    assert b"=?" not in header_block(mail.raw)
    assert mail.message["To"] == envelope
    assert mail.message["To"].addresses[0].username == envelope.split("@")[0]
    assert mail.message["Subject"] == "你的验证码"
    assert "654321" in mail.message.get_content()
    assert all(len(line) <= 998 for line in mail.raw.split(b"\r\n"))


def test_a_utf8_mail_and_an_ascii_mail_share_one_connection(server_factory, service):
    server = server_factory(smtputf8=True)
    client = service(server)
    for to in ("josé@example.com", "ascii@example.com", "李@example.com"):
        assert send(client, {"to": to}).status_code == 200
    mails = server.wait_for(3)
    assert [m.rcpt_tos for m in mails] == [["josé@example.com"], ["ascii@example.com"], ["李@example.com"]]
    assert [m.smtp_utf8 for m in mails] == [True, False, True]
    assert mails[1].raw.isascii()  # the ASCII mail stays 7-bit, SMTPUTF8 or not before it
    assert server.connections == 1


# --- non-ASCII local parts and a server without SMTPUTF8: 400, nothing sent, key released


def test_without_smtputf8_a_utf8_local_part_is_refused_and_nothing_is_sent(server_factory, service, caplog):
    caplog.set_level(logging.INFO)
    server = server_factory(smtputf8=False)
    client = service(server, smtp_retries=2, smtp_circuit_threshold=1)
    body = assert_error(send(client, {"to": "josé@example.com", "idempotency_key": "k-utf8"}), 400,
                        "invalid_destination", NO_SMTPUTF8)
    assert body["retryable"] is False
    assert "SMTPUTF8" in body["error_message"]
    assert server.commands == []  # no MAIL FROM, no RCPT, no RSET
    assert server.messages == []
    [line] = [r for r in caplog.records if r.getMessage() == "send_failed"]
    assert (line.error_code, line.phase, line.outcome) == ("invalid_destination", "mail", "invalid_destination")
    assert not [r for r in caplog.records if r.getMessage() == "smtp retry"]  # not retried

    # The key was released: the same key with another body sends (a kept record would be a 409).
    assert send(client, {"to": "jose@example.com", "idempotency_key": "k-utf8"}).status_code == 200
    [mail] = server.wait_for(1)
    assert mail.rcpt_tos == ["jose@example.com"]
    # The pooled connection survived the refusal, and the breaker (threshold 1) did not open.
    assert server.connections == 1
    assert [verb for verb, _ in server.commands] == ["MAIL", "RCPT"]


def test_without_smtputf8_the_same_request_again_is_refused_again_not_replayed(server_factory, service):
    server = server_factory(smtputf8=False)
    client = service(server)
    for _ in range(2):
        response = send(client, {"to": "李@例子.中国", "idempotency_key": "k-again"})
        assert_error(response, 400, "invalid_destination", NO_SMTPUTF8)
        assert "Idempotent-Replayed" not in response.headers
    assert server.commands == [] and server.messages == []
    assert server.connections == 1  # the connection was kept and used again, without an RSET


def test_without_smtputf8_an_idn_domain_alone_still_sends(server_factory, service):
    server = server_factory(smtputf8=False)
    client = service(server)
    assert_error(send(client, {"to": "josé@example.com"}), 400, "invalid_destination", "SMTPUTF8")
    assert send(client, {"to": IDN}).status_code == 200
    [mail] = server.wait_for(1)
    assert mail.rcpt_tos == [IDN_ACE] and not mail.smtp_utf8


# --- everything else stays strict

STILL_REFUSED = [
    # invisible and direction-changing characters, and tricks with them
    ("a\u202eb@example.com", "RIGHT-TO-LEFT OVERRIDE"),
    ("pay\u200bpal@example.com", "ZERO WIDTH SPACE"),
    ("a@exa\u200dmple.com", "ZERO WIDTH JOINER"),
    ("a\ufeff@example.com", "ZERO WIDTH NO-BREAK SPACE"),
    ("\u0300a@example.com", "COMBINING GRAVE ACCENT"),
    ("a\u3000b@例子.中国", "IDEOGRAPHIC SPACE"),
    ("a\u00a0b@example.com", "NO-BREAK SPACE"),
    ("a\u2028b@example.com", "LINE SEPARATOR"),
    ("a\u0085b@example.com", "U+0085"),
    ("a@abא.com", "Invalid direction"),  # a label mixing left-to-right and right-to-left (IDNA's bidi rule)
    ("a＠example.com", "full-width"),  # a homoglyph of the @
    # IDN domains with a character IDNA does not allow
    ("a@☃.net", "not allowed"),
    ("a@\U0001F600.com", "not allowed"),
    ("a@exam_ple.中国", "invalid characters"),
    ("a@xn--zz.com", "not valid IDNA"),
    # special-use names, internationalised or not
    ("a@例子.local", "special-use"),
    ("a@例子.invalid", "special-use"),
    ("a@例子.localhost", "special-use"),
    ("a@例子.onion", "special-use"),
    # RFC 2047 encoded-words, with and without non-ASCII around them
    ("=?utf-8?q?jos=C3=A9?=@example.com", "encoded-word"),
    ("josé=?x?=@example.com", "encoded-word"),
    ("a@=?utf-8?q?=E4=BE=8B?=.中国", "encoded-word"),
    # 64 octets before the @, counted in UTF-8
    ("é" * 33 + "@example.com", "66 bytes long in UTF-8; at most 64"),
    ("李" * 22 + "@example.com", "66 bytes long in UTF-8; at most 64"),
    ("李" * 65 + "@example.com", "too long before the @-sign"),
    # what was refused for ASCII addresses is refused with non-ASCII around it too
    ('"josé"@example.com', "Quoting"),
    ("josé..x@example.com", "period"),
    ("josé@[192.0.2.1]", "bracketed IP"),
    ("José <jose@example.com>", "display name"),
    ("李@例子", "not valid"),  # no dot in the domain
]


@pytest.mark.parametrize("to, reason", STILL_REFUSED, ids=[f"case{i}" for i in range(len(STILL_REFUSED))])
def test_what_stays_refused_is_400_with_the_reason_and_nothing_is_sent(server_factory, service, to, reason):
    server = server_factory(smtputf8=True)
    client = service(server)
    body = assert_error(send(client, {"to": to, "idempotency_key": "k-strict"}), 400, "invalid_destination",
                        "to is not a valid email address: ")
    assert reason in body["error_message"]
    assert server.commands == [] and server.messages == []
    assert send(client, {"to": "fixed@example.com", "idempotency_key": "k-strict"}).status_code == 200  # released


def test_an_smtp_from_outside_ascii_still_stops_startup():
    for sender in ("josé@example.com", "noreply@例子.中国"):
        with pytest.raises(ConfigError) as err:
            settings_from({"SMTP_FROM": sender})
        assert str(err.value).startswith("SMTP_FROM: expected an ASCII email address like noreply@example.com (only "
                                         "ASCII addresses are supported here")


def test_a_non_ascii_sender_name_in_a_utf8_mail_arrives_decoded(server_factory, make_client):
    server = server_factory(smtputf8=True)
    client = make_client(settings_from(smtp_env(server) | {"SMTP_FROM_NAME": "Herald 验证"}))
    assert send(client, {"to": "李@example.com"}).status_code == 200
    [mail] = server.wait_for(1)
    assert mail.message["From"].addresses[0].display_name == "Herald 验证"
    assert mail.message["From"].addresses[0].addr_spec == "noreply@herald.test"


# --- odd but valid non-ASCII, and hostile non-ASCII: never a 500, never an extra header

OUR_HEADERS = {"from", "to", "subject", "date", "message-id", "auto-submitted", "x-auto-response-suppress",
               "content-type", "content-transfer-encoding", "mime-version"}
# (to, what a server with SMTPUTF8 receives or the error_code, the same for a server without)
ODD_RECIPIENTS = [
    ("a\U0001F600@example.com", "a\U0001F600@example.com", "invalid_destination"),  # an emoji: valid in RFC 6531
    ("ｊｏｓé@example.com", "ｊｏｓé@example.com", "invalid_destination"),  # fullwidth: a local part is not mapped
    ("אa@example.com", "אa@example.com", "invalid_destination"),  # a right-to-left local part
    ("李.小.龙@例子.中国", "李.小.龙@xn--fsqu00a.xn--fiqs8s", "invalid_destination"),
    ("a.b@例子.中国", "a.b@xn--fsqu00a.xn--fiqs8s", "a.b@xn--fsqu00a.xn--fiqs8s"),
    ("josé@example.com\r\nBcc: x@evil.example", "invalid_destination", "invalid_destination"),
    ("josé@example.com, b@evil.example", "invalid_destination", "invalid_destination"),
    ("jos\ud800@example.com", "invalid_request", "invalid_request"),  # a lone surrogate: no mail can encode it
    ("=?utf-8?b?5p2O?=@例子.中国", "invalid_destination", "invalid_destination"),
    ("李" * 21 + "@" + ("例" * 60 + ".") * 4 + "中国", "invalid_destination", "invalid_destination"),  # IDNA: too long
]


@pytest.mark.parametrize("smtputf8", [True, False], ids=["server-with-smtputf8", "server-without"])
def test_no_non_ascii_recipient_crashes_a_worker_or_injects_a_header(server_factory, service, smtputf8):
    server = server_factory(smtputf8=smtputf8)
    client = service(server)
    for to, with_smtputf8, without in ODD_RECIPIENTS:
        expected = with_smtputf8 if smtputf8 else without
        before = len(server.messages)
        response = send(client, {"to": to})
        assert response.is_json, response.get_data(as_text=True)
        if "@" not in expected:
            assert response.status_code == 400, (to, response.get_json())
            assert response.get_json()["error_code"] == expected
            assert len(server.messages) == before
            continue
        assert response.status_code == 200, (to, response.get_json())
        mail = server.wait_for(before + 1)[-1]
        assert mail.rcpt_tos == [expected]
        assert mail.message["To"] == expected
        assert {name.lower() for name in mail.message.keys()} <= OUR_HEADERS
        assert all(len(line) <= 998 for line in mail.raw.split(b"\r\n"))
    assert len(server.messages) == (5 if smtputf8 else 1)
    assert len(mails_from(server)) == len(server.messages)  # no MAIL FROM for a refused one
