"""The Postfix + Dovecot test bed (tests/support/mta.py) works as the bounce reader (issue #23) needs: a mail sent
through Postfix (STARTTLS + AUTH, DSN parameters) that the next hop refuses comes back as a delivery status
notification in the Dovecot mailbox, read over IMAP. Needs root, Postfix and Dovecot: marked `mta`, run by
`make test-mta` (CI), left out of `make test`."""

from __future__ import annotations

import email.policy
import smtplib
import time
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from imapclient import IMAPClient

from herald_smtp.config import settings_from
from herald_smtp.web.app import create_app
from tests.support.client import send
from tests.support.mta import MtaBed

pytestmark = pytest.mark.mta

HARD_BOUNCE = "550 5.1.1 <someone@example.org>: Recipient address rejected: User unknown"
ENVID = "0f3c2a9d8e7b4c1a9e6d5b4a3c2d1e0f@example.com"


def login_code_mail(message_id: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Herald <noreply@example.com>"
    mail["To"] = "someone@example.org"
    mail["Subject"] = "Your login code"
    mail["Date"] = "Sat, 05 Dec 2026 14:00:00 +0000"
    mail["Message-ID"] = f"<{message_id}>"
    mail.set_content("Your verification code is: 482913")
    return mail


def notifications(bed: MtaBed, count: int = 1, timeout: float = 30.0) -> list[EmailMessage]:
    """The first `count` mails in the bounce mailbox, read over IMAP (STARTTLS, LOGIN), within `timeout`."""
    deadline = time.monotonic() + timeout
    with IMAPClient(bed.imap_host, port=bed.imap_port, ssl=False, timeout=10) as imap:
        imap.starttls(bed.client_context())
        imap.login(bed.imap_user, bed.imap_password)
        imap.select_folder(bed.imap_mailbox, readonly=True)
        while len(ids := imap.search("ALL")) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(ids)} of {count} notifications over IMAP after {timeout:.0f} s\n"
                                     + bed.logs())
            time.sleep(0.5)
            imap.noop()
        fetched = imap.fetch(ids[:count], ["RFC822"])
    return [BytesParser(policy=email.policy.default).parsebytes(fetched[i][b"RFC822"]) for i in ids[:count]]


def delivery_status(report: EmailMessage) -> list[dict[str, str]]:
    """The field groups of the report's message/delivery-status part: per-message first, then per-recipient."""
    part = next(part for part in report.walk() if part.get_content_type() == "message/delivery-status")
    return [{key.lower(): str(value) for key, value in group.items()} for group in part.get_payload()]


def test_a_refused_mail_comes_back_as_a_dsn_in_the_imap_mailbox(mta, mta_next_hop):
    mta_next_hop.inject("rcpt", reply=HARD_BOUNCE)
    with smtplib.SMTP(mta.smtp_host, mta.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.herald.test")
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")  # AUTH only over TLS
        smtp.starttls(context=mta.client_context())
        smtp.ehlo("client.herald.test")
        assert smtp.has_extn("dsn") and "PLAIN" in smtp.esmtp_features["auth"].split()
        smtp.login(mta.smtp_user, mta.smtp_password)
        refused = smtp.send_message(login_code_mail(ENVID), from_addr=mta.bounce_address,
                                    to_addrs=["someone@example.org"], mail_options=["RET=HDRS", f"ENVID={ENVID}"],
                                    rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;someone@example.org"])
    assert refused == {}  # Postfix took it; the refusal comes later, from the next hop

    [report] = notifications(mta)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    per_message, per_recipient = delivery_status(report)
    assert per_message["original-envelope-id"] == ENVID
    assert per_recipient["action"] == "failed" and per_recipient["status"] == "5.1.1"
    assert per_recipient["original-recipient"] == "rfc822;someone@example.org"
    assert "550 5.1.1" in per_recipient["diagnostic-code"]
    returned = next(part for part in report.walk() if part.get_content_type() == "text/rfc822-headers")
    assert f"Message-ID: <{ENVID}>" in returned.get_content()  # RET=HDRS: the headers, not the code
    assert "482913" not in report.as_string()
    assert mta_next_hop.fault_hits["rcpt"] >= 1 and mta_next_hop.messages == []


def test_the_relay_takes_mail_for_elsewhere_only_after_auth(mta):
    with smtplib.SMTP(mta.smtp_host, mta.smtp_port, timeout=10) as smtp:
        smtp.starttls(context=mta.client_context())
        smtp.ehlo("client.herald.test")
        smtp.mail(mta.bounce_address)
        code, reply = smtp.rcpt("someone@example.org")
    assert code == 554 and b"Relay access denied" in reply
    with smtplib.SMTP(mta.smtp_host, mta.smtp_port, timeout=10) as smtp:
        smtp.starttls(context=mta.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(mta.smtp_user, "wrong-password")


def test_herald_smtp_through_the_bed_gets_a_dsn_naming_its_message_id(mta, mta_next_hop):
    mta_next_hop.inject("rcpt", reply=HARD_BOUNCE)
    settings = settings_from({"SMTP_FROM": "noreply@example.com"} | mta.smtp_env())
    response = send(create_app(settings).test_client(), {"to": "someone@example.org", "params": {"code": "482913"}})
    assert response.status_code == 200, response.get_json()
    message_id = response.get_json()["message_id"]

    [report] = notifications(mta)
    per_message, per_recipient = delivery_status(report)
    assert per_message["original-envelope-id"] == message_id
    assert per_recipient["action"] == "failed"
    assert per_recipient["original-recipient"] == "rfc822;someone@example.org"
