"""The relay's own id for an accepted mail, found in its reply to the final dot.

On-call searches the provider's console or the relay's log for this id
("queued as 4XyZ1234AbC", Exim's "id=...", SES's message id...). One table of
(software, its real reply text, pattern), first match wins; queue_id_in()
applies it. Pure: no I/O, never raises.

The reply is the text as the transport reports it: the lines of a multi-line
reply joined by a space, without the code in front, possibly starting with
the enhanced status code ("2.0.0 Ok: queued as ..."). Patterns key on each
software's own wording around the id, never on a bare token, so a reply that
carries no id ("2.0.0 OK", "Great success") gives None. There is no generic
"<...>" fallback: a bare <local@domain> in a reply could be the recipient's
address, which must never reach a log as a "queue id".

The id is returned only when it is 1-128 characters of [A-Za-z0-9._@=+/-]
(the < > around an Exchange id stripped); otherwise None, never a cut or
cleaned-up id, since a wrong id is worse than none.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_LENGTH = 128
# Characters safe in a log line and a JSON string; base64url ids (SendGrid's) fit.
_ID = re.compile(r"[A-Za-z0-9._@=+/-]{1,%d}" % MAX_LENGTH, re.ASCII)


class QueueIdForm(NamedTuple):
    software: str
    example: str  # a real reply of that software, as the transport reports it
    pattern: re.Pattern[str]  # group 1 is the id


def _form(software: str, example: str, pattern: str) -> QueueIdForm:
    # re.ASCII: with IGNORECASE alone, [a-z] would also match the Kelvin sign and the long s.
    return QueueIdForm(software, example, re.compile(pattern, re.IGNORECASE | re.ASCII))


# First match wins: the forms naming their software's exact wording come before the generic ones.
QUEUE_ID_FORMS: tuple[QueueIdForm, ...] = (
    _form("Postfix (short and long queue ids), also SendGrid, Postmark, Brevo: queued as ID",
          "2.0.0 Ok: queued as 4XyZ1234AbC",
          r"\bqueued as (\S+)"),
    _form("Exim",
          "OK id=1rA2bC-0004dE-Fg",
          r"\bOK id=([A-Za-z0-9]{6}-[A-Za-z0-9]{6,11}-[A-Za-z0-9]{2,4})(?=\s|$)"),
    _form("Microsoft 365 / Exchange Online, Exchange on-premises (2.6.0 ... Queued mail for delivery)",
          "2.0.0 OK <DB9PR04MB8412A1B2C3D4E5F6A7B8C9D0E1F2@DB9PR04MB8412.eurprd04.prod.outlook.com> "
          "[Hostname=DB9PR04MB8412.eurprd04.prod.outlook.com]",
          r"(?:^|\s)(<[^<>\s]+>)\s+(?:\[(?:Hostname|InternalId)=|Queued mail for delivery)"),
    _form("Gmail / Google Workspace (the id before '- gsmtp', as Google logs it)",
          "2.0.0 OK 1653776100 r33-20020a056870582100b000f169cbbb32sm1847208oap.43 - gsmtp",
          r"\bOK\s+\d+\s+(\S+?)\s?-\s?gsmtp\b"),
    _form("Amazon SES (its message id)",
          "Ok 0100016e4ab7c399-5058a2a5-d4ad-407b-92b8-94472f229325-000000",
          r"\bOk ([0-9a-f]{16}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-[0-9]{6})(?=\s|$)"),
    _form("Sendmail, OpenSMTPD",
          "2.0.0 4B5CdEfG012345 Message accepted for delivery",
          r"(?:^|\s)([A-Za-z0-9]{8,20}) Message accepted for delivery"),
    _form("Haraka",
          "Message Queued (C9F1B0C2-3D4E-4F5A-8B6C-7D8E9F0A1B2C.1)",
          r"\bMessage Queued \(([^()\s]+)\)"),
    _form("generic: id=ID (Exim's other id formats and servers copying its wording)",
          "OK id=remote-123",
          r"(?:^|\s)id=(\S+)"),
)


def queue_id_in(reply: str) -> str | None:
    """The relay's queue id in its reply to the final dot, or None when the reply names none.

    A non-None result is 1-128 characters of [A-Za-z0-9._@=+/-]; the first form of
    QUEUE_ID_FORMS that matches decides, and an id it finds that breaks those limits gives None.
    """
    for form in QUEUE_ID_FORMS:
        match = form.pattern.search(reply)
        if match:
            return _checked(match.group(1))
    return None


def _checked(raw: str) -> str | None:
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    return raw if _ID.fullmatch(raw) else None
