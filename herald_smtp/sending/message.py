"""SendRequest -> email.message.EmailMessage: headers, Message-ID, UTF-8 body.

The To header carries the envelope's form of the recipient: the IDNA (xn--)
domain, and a non-ASCII local part as it is. Such a local part can only be
written as UTF-8, which the mailer does (email.policy.SMTPUTF8) for a mail it
sends with SMTPUTF8; every other mail is serialised 7-bit (email.policy.SMTP).
"""

from __future__ import annotations

import uuid
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

from ..config import Settings
from .request import SendRequest


def new_message_id(settings: Settings) -> str:
    """A globally unique id on the sender's domain, without angle brackets."""
    return f"{uuid.uuid4().hex}@{settings.sender.domain}"


def build_message(request: SendRequest, settings: Settings, message_id: str) -> EmailMessage:
    msg = EmailMessage()
    sender = settings.sender
    msg["From"] = Address(display_name=settings.smtp_from_name, username=sender.local, domain=sender.domain)
    msg["To"] = Address(username=request.to.local, domain=request.to.ascii_domain)
    msg["Subject"] = request.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{message_id}>"
    # Non-ASCII goes base64 so the mail stays 7-bit clean: no server needs 8BITMIME.
    msg.set_content(request.body, charset="utf-8", cte=None if request.body.isascii() else "base64")
    return msg
