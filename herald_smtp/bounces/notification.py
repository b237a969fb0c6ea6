"""Delivery status notifications: what a bounce mail says about which of our mails.

    read(raw) -> Notification | None    None: not a notification we can read (it goes to `Unrecognised`)

An RFC 3464 report (multipart/report; report-type=delivery-status, what Postfix, Exim, Exchange and the hosted
relays write) is read with the standard library: per recipient its Action, Status, Diagnostic-Code and Remote-MTA.
Other bounce formats go through flufl.bounce's detectors, which name the failed addresses and whether the failure
is permanent, nothing more. The original mail is found by its ENVID (Original-Envelope-Id: herald-smtp sends
its message_id there) or else by the Message-ID of the headers the notification returns (RET=HDRS).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from email.message import Message

from flufl.bounce import all_failures

from ..addresses import mask_addresses

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_MESSAGE_ID = re.compile(r"^Message-ID:[ \t]*<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE)
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class RecipientReport:
    """What the notification says of one recipient."""

    address: str  # in clear, as the notification names it: only ever turned into a suppression key or masked
    action: str  # failed, delayed, delivered, relayed or expanded (RFC 3464)
    status: str  # the enhanced status code, e.g. 5.1.1; "" when the notification gives none
    diagnostic: str  # Diagnostic-Code (the remote server's reply), addresses masked
    remote_mta: str

    @property
    def event(self) -> str:
        """The message status event: bounced, delayed or delivered."""
        if self.action == "failed":
            return "bounced"
        return "delayed" if self.action == "delayed" else "delivered"

    @property
    def kind(self) -> str:
        """hard (a permanent failure), soft (a failure after temporary ones: the relay gave up), delayed,
        delivered: the `kind` label of the bounce metrics."""
        if self.action == "failed":
            return "soft" if self.status.startswith("4") else "hard"
        return self.event


@dataclass(frozen=True)
class Notification:
    notification_id: str  # the notification's own Message-ID, else a digest of its bytes: seen twice, recorded once
    message_id: str | None  # the original's message_id, when the notification names it
    reporting_mta: str
    arrived_at: str  # when the relay received the original (Arrival-Date), else the notification's Date
    recipients: tuple[RecipientReport, ...]


def read(raw: bytes) -> Notification | None:
    """The notification in `raw` (a whole mail as the mailbox holds it), or None if it is none we can read."""
    mail = email.message_from_bytes(raw, policy=email.policy.compat32)
    report = _delivery_status(mail)
    if report is not None:
        per_message, per_recipient = report
        recipients = tuple(_recipient(fields) for fields in per_recipient)
        envelope_id = _xtext_decode(_field(per_message, "Original-Envelope-Id"))
        reporting_mta = _field(per_message, "Reporting-MTA")
        arrived_at = _field(per_message, "Arrival-Date")
    else:
        recipients = _detected(mail)
        envelope_id, reporting_mta, arrived_at = "", "", ""
    recipients = tuple(r for r in recipients if r.address)
    if not recipients:
        return None
    own_id = _angle_free(str(mail.get("Message-ID", "")))
    return Notification(
        notification_id=own_id or "sha256:" + hashlib.sha256(raw).hexdigest(),
        message_id=envelope_id or _returned_message_id(mail),
        reporting_mta=reporting_mta,
        arrived_at=arrived_at or str(mail.get("Date", "")),
        recipients=recipients,
    )


def _delivery_status(mail: Message) -> tuple[Message, list[Message]] | None:
    """The per-message and per-recipient field blocks of an RFC 3464 report, if `mail` holds one."""
    for part in mail.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = [block for block in part.get_payload() if isinstance(block, Message)]
            if len(blocks) >= 2:
                return blocks[0], blocks[1:]
    return None


def _recipient(fields: Message) -> RecipientReport:
    final = _field(fields, "Final-Recipient") or _field(fields, "Original-Recipient")
    diagnostic = _field(fields, "Diagnostic-Code")
    return RecipientReport(
        address=_address_of(final),
        action=_field(fields, "Action").lower(),
        status=_status(_field(fields, "Status"), diagnostic),
        diagnostic=mask_addresses(diagnostic),
        remote_mta=_field(fields, "Remote-MTA"),
    )


def _status(reported: str, diagnostic: str) -> str:
    """The enhanced status code: the Status field's, unless it is a bare class (5.0.0, 4.0.0: Exim writes no
    other) and the remote server's reply in the Diagnostic-Code names a precise one (550 5.1.1): then that.
    A relay that gave up after temporary refusals thus reads 4.x.x whatever class it reported."""
    status = _STATUS.search(reported)
    detail = _STATUS.search(diagnostic)
    if detail and (status is None or status[1].endswith(".0.0")):
        return detail[1]
    return status[1] if status else ""


def _detected(mail: Message) -> tuple[RecipientReport, ...]:
    """A bounce in another format: flufl.bounce names the addresses, permanent or temporary, and no more."""
    try:
        temporary, permanent = all_failures(mail)
    except Exception:  # noqa: BLE001 - its heuristic detectors trip over odd mails (no From:): not a bounce we know
        return ()
    return tuple(
        RecipientReport(address=address.decode("utf-8", "replace"), action=action, status="", diagnostic="",
                        remote_mta="")
        for action, addresses in (("failed", permanent), ("delayed", temporary - permanent))
        for address in sorted(addresses)
    )


def _returned_message_id(mail: Message) -> str | None:
    """The Message-ID of the original, from the headers (or whole mail) the notification returns, or quotes."""
    for part in mail.walk():
        if part.get_content_type() in ("text/rfc822-headers", "message/rfc822", "message/rfc822-headers"):
            found = _MESSAGE_ID.search(_text_of(part))
            if found:
                return found[1]
    # Bounces that quote the original in their text body (the older, non-RFC 3464 formats).
    for part in mail.walk():
        if part.get_content_maintype() == "text":
            found = _MESSAGE_ID.search(_text_of(part))
            if found:
                return found[1]
    return None


def _text_of(part: Message) -> str:
    if part.is_multipart():  # message/rfc822: the enclosed mail
        return "".join(str(inner) for inner in part.get_payload())
    payload = part.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload or "")


def _field(fields: Message, name: str) -> str:
    value = fields.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _address_of(typed: str) -> str:
    """rfc822; user@example.org -> user@example.org (RFC 3464: address-type ; address)."""
    address = typed.partition(";")[2] if ";" in typed else typed
    return _angle_free(address.strip())


def _angle_free(value: str) -> str:
    return value.strip().strip("<>").strip()


def _xtext_decode(value: str) -> str:
    return _XTEXT.sub(lambda hexed: chr(int(hexed[1], 16)), value)
