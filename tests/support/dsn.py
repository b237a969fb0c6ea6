"""Delivery status notifications (RFC 3464) built with the standard library's email package, one field at a
time, for the tests of the bounce recorder; tests/fixtures/dsn/ holds the ones real MTAs wrote."""

from __future__ import annotations

from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


def notification(envid: str | None, recipient: str = "jhon@example.org", action: str = "failed",
                 status: str = "5.1.1", diagnostic: str = "smtp; 550 5.1.1 <jhon@example.org>: User unknown",
                 returned_id: str | None = None, own_id: str = "<dsn-1@relay.example.net>") -> bytes:
    """An RFC 3464 report as a relay writes it: a text part, the delivery-status part, the returned headers."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@relay.example.net"
    report["To"] = "bounces@example.com"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = "Sat, 05 Dec 2026 14:00:00 +0000"
    report["Message-ID"] = own_id
    report.attach(MIMEText("Your message could not be delivered.\n"))
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; relay.example.net"
    if envid is not None:
        per_message["Original-Envelope-Id"] = envid
    per_message["Arrival-Date"] = "Sat, 05 Dec 2026 13:59:58 +0000"
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Remote-MTA"] = "dns; mx.example.org"
    per_recipient["Diagnostic-Code"] = diagnostic
    status_part = Message()
    status_part.set_type("message/delivery-status")
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    returned = envid if returned_id is None else returned_id  # "": the returned headers carry no Message-ID
    headers = MIMEText(f"From: login@example.com\nTo: {recipient}\nSubject: Your code\n"
                       + (f"Message-ID: <{returned}>\n" if returned else ""), "rfc822-headers")
    report.attach(headers)
    return report.as_bytes()
