"""SendRequest -> Mail: the exact bytes that go after DATA, and the Message-ID.

The bytes are what email.message.EmailMessage would give (build_message, then
as_bytes with email.policy.SMTP, or email.policy.SMTPUTF8 for a mail that
needs SMTPUTF8), written directly where that is cheap to do exactly: the
email package parses every header it is given and re-renders it, which cost
more than a whole HTTP request at the service's throughput. MailWriter writes
From once per process, and To, Subject and the body directly when they are
simple (a short ASCII subject, a dot-atom address, a body that is ASCII with
short lines or goes base64); anything else, header by header, goes through the
email package's own folding (RFC 2047, quoting, long lines). A mail that needs
SMTPUTF8 is built entirely by the email package. tests/test_message.py checks
both paths give the same bytes.

Every mail says it is automatic (AUTOMATIC_HEADERS: Auto-Submitted, X-Auto-Response-Suppress), after the
Message-ID.

With DKIM_PRIVATE_KEY_FILE set, the Mail carries MailWriter's DkimSigner (dkim_signer.py): each relay's
bytes get a DKIM-Signature header in front when that relay is tried (Mail.payload_for), nothing else changes.

The To header carries the envelope's form of the recipient: the IDNA (xn--)
domain, and a non-ASCII local part as it is. Such a local part can only be
written as UTF-8 (email.policy.SMTPUTF8) in a mail sent with SMTPUTF8; every
other mail is 7-bit. A non-ASCII body goes base64, so no server needs 8BITMIME.
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import re
import time
import uuid
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from ..addresses import Mailbox, parse_address
from ..config import Relay, Settings
from ..smtp.mailer import Mail
from ..smtp.transport import needs_smtputf8
from .request import SendRequest

_POLICY = email.policy.SMTP
_MAX_LINE: int = _POLICY.max_line_length or 78  # 78; the default policy always sets it
# Text the email package writes back unchanged: printable ASCII words, single spaces between them,
# no encoded-word marker.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_BASE64_CHUNK = _MAX_LINE // 4 * 3  # the email package's base64 line: 57 bytes in, 76 characters out
# What the mail is: machine-written (RFC 3834), so vacation and out-of-office replies stay away from the
# sender address (Exchange and Outlook read their own header). No List-Unsubscribe: a login code is no list.
AUTOMATIC_HEADERS = (("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All"))
_AUTOMATIC = "".join(f"{name}: {value}\r\n" for name, value in AUTOMATIC_HEADERS)


def new_message_id(settings: Settings) -> str:
    """A globally unique id on the sender's domain, without angle brackets."""
    return f"{uuid.uuid4().hex}@{settings.sender.domain}"


def now_header_date() -> str:
    return _header_date(int(time.time()))


@functools.lru_cache(maxsize=4)
def _header_date(whole: int) -> str:
    """The Date header's value for a second (it has no finer part): made once a second, not once a mail."""
    return format_datetime(datetime.fromtimestamp(whole, timezone.utc))


class MailWriter:
    """Builds each Mail; what never changes (the From header of each relay, the DKIM key) is prepared once, here."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.signer = _signer(settings)

    @functools.cached_property
    def _from(self) -> str:
        # On first use, not at startup: without SMTP_FROM the service starts and answers smtp_not_configured.
        return _fold("From", _from_address(self.settings.relays[0]))

    @functools.cached_property
    def _from_lines(self) -> dict:
        """policy -> the From line of every relay (Settings.relays order), or () when they all write the same."""
        relays = self.settings.relays
        if all((r.from_address, r.from_name) == (relays[0].from_address, relays[0].from_name) for r in relays):
            return {}
        return {policy: tuple(_fold("From", _from_address(r), policy).encode("utf-8") for r in relays)
                for policy in (_POLICY, email.policy.SMTPUTF8)}

    def build(self, request: SendRequest, message_id: str, date: str | None = None) -> Mail:
        """`date` (RFC 5322 form) defaults to now. The mail carries each relay's From line when they differ
        (a fallback URL's `from` or `from_name`)."""
        date = date or now_header_date()
        if needs_smtputf8(self.settings.smtp_from, str(request.to)):
            return self._mail(message_id, build_message(request, self.settings, message_id, date),
                              email.policy.SMTPUTF8)
        body = _body(request.body)
        if body is None:  # long ASCII lines: quoted-printable or base64, as the email package decides
            return self._mail(message_id, build_message(request, self.settings, message_id, date), _POLICY)
        transfer_encoding, content = body
        head = "".join((
            self._from,
            _to_line(request.to),
            _text_line("Subject", request.subject),
            _text_line("Date", date),
            _text_line("Message-ID", f"<{message_id}>"),
            _AUTOMATIC,
            'Content-Type: text/plain; charset="utf-8"\r\n',
            f"Content-Transfer-Encoding: {transfer_encoding}\r\n",
            "MIME-Version: 1.0\r\n\r\n",
        ))
        return Mail(message_id, head.encode("ascii") + content, self._from_lines.get(_POLICY, ()), self.signer)

    def _mail(self, message_id: str, message: EmailMessage, policy) -> Mail:
        payload = message.as_bytes(policy=policy)
        from_lines = self._from_lines.get(policy, ())
        if from_lines and not payload.startswith(from_lines[0]):
            raise AssertionError("the email package wrote the From header differently from MailWriter")
        return Mail(message_id, payload, from_lines, self.signer)


def _signer(settings: Settings):
    """The DkimSigner, or None without DKIM_PRIVATE_KEY_FILE. Imported only then: dkimpy brings dnspython's
    resolver and its own crypto, which a service that does not sign should not load (memory, startup)."""
    if settings.dkim is None:
        return None
    from .dkim_signer import DkimSigner

    return DkimSigner(settings.dkim, settings.relays)


def _from_address(relay: Relay) -> Address:
    sender = parse_address(relay.from_address)
    return Address(display_name=relay.from_name, username=sender.local, domain=sender.domain)


def build_message(request: SendRequest, settings: Settings, message_id: str, date: str | None = None) -> EmailMessage:
    """The same mail as an EmailMessage: the reference MailWriter matches, and its fallback."""
    msg = EmailMessage()
    sender = settings.sender
    msg["From"] = Address(display_name=settings.smtp_from_name, username=sender.local, domain=sender.domain)
    msg["To"] = Address(username=request.to.local, domain=request.to.ascii_domain)
    msg["Subject"] = request.subject
    msg["Date"] = date or now_header_date()
    msg["Message-ID"] = f"<{message_id}>"
    for name, value in AUTOMATIC_HEADERS:
        msg[name] = value
    msg.set_content(request.body, charset="utf-8", cte=None if request.body.isascii() else "base64")
    return msg


def _fold(name: str, value, policy=_POLICY) -> str:
    """The header line as `policy` writes it (parsed, re-rendered, folded, RFC 2047 if needed)."""
    return policy.header_factory(name, value).fold(policy=policy)


def _text_line(name: str, value: str) -> str:
    line = f"{name}: {value}\r\n"
    if len(line) - 2 <= _MAX_LINE and _PLAIN.fullmatch(value):
        return line
    return _fold(name, value)


def _to_line(to: Mailbox) -> str:
    line = f"To: {to.local}@{to.ascii_domain}\r\n"
    if len(line) - 2 <= _MAX_LINE and _DOT_ATOM.fullmatch(to.local) and to.ascii_domain.isascii():
        return line
    return _fold("To", Address(username=to.local, domain=to.ascii_domain))


def _body(text: str) -> tuple[str, bytes] | None:
    """(Content-Transfer-Encoding, the encoded body with CRLF); None when the email package must choose."""
    lines = text.encode("utf-8").splitlines()
    if not text.isascii():
        data = b"\n".join(lines) + b"\n"
        chunks = (binascii.b2a_base64(data[i:i + _BASE64_CHUNK]) for i in range(0, len(data), _BASE64_CHUNK))
        return "base64", b"".join(chunks).replace(b"\n", b"\r\n")
    if max(map(len, lines), default=0) <= _MAX_LINE:
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    return None
