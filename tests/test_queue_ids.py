"""The relay's queue id in its reply to the final dot (herald_smtp/smtp/queue_ids.py).

One table of replies, each as its software really gives it (the reply's text
as the transport reports it, and the bytes on the wire where they differ),
with the id on-call would search for, or None. Each is checked by calling
queue_id_in on the text, and again end to end: a real SMTP server on
loopback answers the final dot with it and the id comes out of the reply
text transport.transmit returns, which is how the caller uses it. A property
test feeds arbitrary text: never an exception, never an id outside the
contract.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from herald_smtp.config.settings import Relay, TlsMode
from herald_smtp.smtp import transport
from herald_smtp.smtp.queue_ids import QUEUE_ID_FORMS, queue_id_in
from tests.support.scripted_server import ScriptedServer

ID = re.compile(r"[A-Za-z0-9._@=+/-]{1,128}")


@dataclass(frozen=True)
class Case:
    name: str
    text: str  # the reply as transmit returns it: lines joined by a space, no code in front
    expected: str | None
    wire: bytes = b""  # the server's bytes, when not simply "250 " + text

    @property
    def reply(self) -> bytes:
        return self.wire or b"250 " + self.text.encode() + b"\r\n"


EXO_ID = "DB9PR04MB8412A1B2C3D4E5F6A7B8C9D0E1F2@DB9PR04MB8412.eurprd04.prod.outlook.com"

CASES = [
    # Postfix: short (hex) queue ids, and the long ones of enable_long_queue_ids = yes.
    Case("postfix", "2.0.0 Ok: queued as 4XyZ1234AbC", "4XyZ1234AbC"),
    Case("postfix-short-hex", "2.0.0 Ok: queued as 7F94E1C0299", "7F94E1C0299"),
    Case("postfix-long-queue-id", "2.0.0 Ok: queued as 4dR1Jz0zR5z9sTn", "4dR1Jz0zR5z9sTn"),
    Case("postfix-without-enhanced-codes", "Ok: queued as 3F1A2B4C5D", "3F1A2B4C5D"),
    Case("postfix-no-id", "2.0.0 Ok: queued", None),
    Case("sendgrid", "Ok: queued as vbHP4sCZTs6Ba7yP3nXYaQ", "vbHP4sCZTs6Ba7yP3nXYaQ"),
    Case("sendgrid-base64url", "Ok: queued as Z8-TDaO_QWmEqyYZlfXAyg", "Z8-TDaO_QWmEqyYZlfXAyg"),
    Case("postmark", "Ok: queued as b7bc2f4a-e38e-4336-af7d-e6c392c2f817", "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"),
    Case("queued-as-angle-brackets", "2.0.0 OK: queued as <202312011234.12345678901@smtp-relay.example.net>",
         "202312011234.12345678901@smtp-relay.example.net"),
    # Exim: the classic 6-6-2 id and the 6-11-4 one of Exim 4.97 and later.
    Case("exim", "OK id=1rA2bC-0004dE-Fg", "1rA2bC-0004dE-Fg"),
    Case("exim-4.97-long-id", "OK id=1tAbcD-00000000XyZ-1aBc", "1tAbcD-00000000XyZ-1aBc"),
    Case("generic-id=", "2.0.0 OK id=A1B2C3D4E5", "A1B2C3D4E5"),
    # Sendmail ("%s Message accepted for delivery" with its queue id), OpenSMTPD (its 8-hex msgid).
    Case("sendmail", "2.0.0 4B5CdEfG012345 Message accepted for delivery", "4B5CdEfG012345"),
    Case("opensmtpd", "2.0.0 7ac1d3e9 Message accepted for delivery", "7ac1d3e9"),
    Case("message-accepted-without-id", "2.5.0 Message accepted for delivery", None),
    Case("message-accepted-bare", "Message accepted for delivery", None),
    # Microsoft 365 / Exchange Online, and Exchange on-premises (2007 and later).
    Case("exchange-online", f"2.0.0 OK <{EXO_ID}> [Hostname=DB9PR04MB8412.eurprd04.prod.outlook.com]", EXO_ID),
    Case("exchange-on-prem", "2.6.0 <a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d@mail.contoso.com> [InternalId=1236950581249, "
         "Hostname=EX01.contoso.com] Queued mail for delivery", "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d@mail.contoso.com"),
    Case("exchange-on-prem-with-rate", "2.6.0 <4e1c9a7b2d@EX02.contoso.local> [InternalId=987654, "
         "Hostname=EX02.contoso.local] 1520 bytes in 0.054, 27.386 KB/sec Queued mail for delivery",
         "4e1c9a7b2d@EX02.contoso.local"),
    Case("exchange-2010", "2.6.0 <WEB01JswFCHOzyfyz5b000015ac@smtprelay.eqonline.com> Queued mail for delivery",
         "WEB01JswFCHOzyfyz5b000015ac@smtprelay.eqonline.com"),
    Case("hotmail-legacy", "<SNT0-MC3-F1964xSNUX00142e45@SNT0-MC3-F19.Snt0.hotmail.com> Queued mail for delivery",
         "SNT0-MC3-F1964xSNUX00142e45@SNT0-MC3-F19.Snt0.hotmail.com"),
    # Exchange echoes a Message-ID such as Postfix's "<...@[host]>": brackets are outside the id's characters.
    Case("exchange-address-literal-id", "2.6.0 <20111025103822.7F94E1C0299@[ASTNAGIOS]> [InternalId=274498] "
         "Queued mail for delivery", None),
    # Gmail / Google Workspace: the id before "- gsmtp" (two spaces after OK on the wire).
    Case("gmail", "2.0.0 OK 1653776100 r33-20020a056870582100b000f169cbbb32sm1847208oap.43 - gsmtp",
         "r33-20020a056870582100b000f169cbbb32sm1847208oap.43",
         b"250 2.0.0 OK  1653776100 r33-20020a056870582100b000f169cbbb32sm1847208oap.43 - gsmtp\r\n"),
    Case("gmail-2024", "2.0.0 OK 1707769536 e14-20020aa78c4e000000b006e091489776sm6140274pfd.92 - gsmtp",
         "e14-20020aa78c4e000000b006e091489776sm6140274pfd.92",
         b"250 2.0.0 OK  1707769536 e14-20020aa78c4e000000b006e091489776sm6140274pfd.92 - gsmtp\r\n"),
    Case("gmail-short-id", "2.0.0 OK 1644855633 l11si9233120wms.107 - gsmtp", "l11si9233120wms.107",
         b"250 2.0.0 OK  1644855633 l11si9233120wms.107 - gsmtp\r\n"),
    Case("gmail-2013", "2.0.0 OK 1376056636 i3si9508927obz.16 - gsmtp", "i3si9508927obz.16"),
    Case("gmail-joined-gsmtp", "2.0.0 OK 1733400000 a1-20020a05600c4e0900b0042c8a1b2c3dsm1234567wmq.12-gsmtp",
         "a1-20020a05600c4e0900b0042c8a1b2c3dsm1234567wmq.12"),
    # Amazon SES: its message id (us-east-1's 0100..., eu-west-1's 0102...).
    Case("ses", "Ok 0100016e4ab7c399-5058a2a5-d4ad-407b-92b8-94472f229325-000000",
         "0100016e4ab7c399-5058a2a5-d4ad-407b-92b8-94472f229325-000000"),
    Case("ses-2016", "Ok 01000154dc729264-93fdd7ea-f039-43d6-91ed-653e8547867c-000000",
         "01000154dc729264-93fdd7ea-f039-43d6-91ed-653e8547867c-000000"),
    Case("ses-eu-west-1", "Ok 010201870dbae81e-35118332-f389-474c-8b37-69ce1e1934ae-000000",
         "010201870dbae81e-35118332-f389-474c-8b37-69ce1e1934ae-000000"),
    Case("haraka", "Message Queued (C9F1B0C2-3D4E-4F5A-8B6C-7D8E9F0A1B2C.1)", "C9F1B0C2-3D4E-4F5A-8B6C-7D8E9F0A1B2C.1"),
    Case("multi-line-reply", "2.0.0 Accepted 2.0.0 Ok: queued as 4XyZ1234AbC", "4XyZ1234AbC",
         b"250-2.0.0 Accepted\r\n250 2.0.0 Ok: queued as 4XyZ1234AbC\r\n"),
    # No id in the reply.
    Case("mailgun", "Great success", None),
    Case("generic-ok", "2.0.0 OK", None),
    Case("aiosmtpd", "OK", None),
    Case("zoho", "Message received", None),
    Case("yahoo", "ok dirdel", None),
    Case("qmail-process-id-only", "ok 1700000000 qp 12345", None),
    Case("rfc-5321-text", "Requested mail action okay, completed", None),
    # Never a bare <address>: it could be the recipient's, which must not reach a log as an id.
    Case("bare-angle-address", "2.0.0 OK <jhon@gmial.com> accepted", None),
    Case("id-of-128", "Ok: queued as " + "A" * 128, "A" * 128),
    Case("id-too-long", "Ok: queued as " + "A" * 129, None),
    Case("id-with-a-quote", "Ok: queued as 4XyZ\"1234", None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_queue_id_in_reply_text(case):
    assert queue_id_in(case.text) == case.expected


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_id_comes_out_of_the_reply_transmit_returns(case):
    with ScriptedServer(script={"dot": [case.reply]}) as server:
        deadline = time.monotonic() + 5
        conn = transport.open_connection(Relay(server.host, server.port, tls=TlsMode.PLAIN), None, deadline)
        try:
            code, reply = transport.transmit(conn, "noreply@herald.test", "user@example.org",
                                             b"Subject: code\r\n\r\n123456\r\n", deadline)
        finally:
            transport.close_quietly(conn)
    assert (code, reply) == (250, case.text)
    assert queue_id_in(reply) == case.expected


@pytest.mark.parametrize("form", QUEUE_ID_FORMS, ids=lambda form: form.software)
def test_each_form_finds_an_id_in_its_own_example(form):
    match = form.pattern.search(form.example)
    assert match is not None and queue_id_in(form.example) is not None


# Fragments of the forms' wording, so the arbitrary text reaches their patterns, not just misses them.
FRAGMENTS = ["queued as ", "OK id=", "id=", " <", "> ", "[Hostname=", "[InternalId=", "Queued mail for delivery",
             "OK 1700000000 ", " - gsmtp", "-gsmtp", "Ok 0100016e4ab7c399-", " Message accepted for delivery",
             "Message Queued (", ")", "2.0.0 ", " ", "\u212a", "\u017f", "A" * 130]


@hsettings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=40)), max_size=12).map("".join))
def test_queue_id_in_never_raises_and_keeps_to_its_contract(text):
    found = queue_id_in(text)
    assert found is None or ID.fullmatch(found)
