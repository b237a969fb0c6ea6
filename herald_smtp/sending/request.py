"""Parsing and validation of the POST /v1/send body into a SendRequest, content resolution included.

Every refusal is an InvalidRequest carrying its Outcome; the web layer renders it.
`to` goes through addresses.parse_address with international=True: an
internationalised domain or a non-ASCII local part is accepted here; whether
the SMTP server can take a non-ASCII local part (SMTPUTF8) is only known once
the mailer has its EHLO (see smtp/transport.py mail_from).

`null` is no value for any field (a wrong type, 400): Herald never sends it, and
taking `"idempotency_key": null` as absent would send without idempotency. An
idempotency key is 1-256 visible ASCII characters (0x21-0x7E) in the body and in
the header alike: a WSGI server reads header bytes as Latin-1, so a non-ASCII key
could never equal its body spelling. `timeout_seconds` is a JSON integer as JSON
Schema counts one: 10.0 is 10.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from ..addresses import ENCODED_WORD, InvalidAddress, Mailbox, parse_address
from ..logs import leading_words
from ..outcomes import Outcome

DEFAULT_SUBJECT = "Verification code"
NO_CODE_BODY = "You have a verification message. Please check your code."
MAX_KEY_LENGTH = 256
# The fields this version reads; any other is ignored, null or not.
FIELDS = ("to", "channel", "subject", "body", "params", "template", "locale", "idempotency_key", "timeout_seconds")

_CRLF = re.compile(r"[\r\n]")
# Everything str.splitlines() breaks on, plus the other C0 controls and DEL: none belong in a header.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# A text body may hold tabs and line breaks, not other control characters (NUL above all).
_BODY_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# An idempotency key: visible ASCII, the same rule in the body and in the Idempotency-Key header.
_KEY = re.compile(r"[\x21-\x7e]+")
# timeout_seconds beyond this is no different from SMTP_TIMEOUT_SECONDS; capping avoids float overflow.
_MAX_TIMEOUT_SECONDS = 86400


class InvalidRequest(ValueError):
    """The body cannot be sent, for the reason in `message` (the answer's), `log_message` for the log line.

    The two differ where the answer quotes what the caller sent (an address validator's reason, an unknown
    channel): the caller is told exactly, the log gets the reason without the request's text.
    """

    def __init__(self, outcome: Outcome, message: str, log_message: str | None = None):
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.log_message = message if log_message is None else log_message
        self.to: str | None = None  # the raw `to`, when there was one, for the log line


@dataclass(frozen=True)
class SendRequest:
    to: Mailbox
    subject: str
    body: str  # resolved content
    params: dict[str, str] = field(default_factory=dict)
    template: str = ""
    locale: str = ""
    idempotency_key: str | None = None
    timeout_seconds: float | None = None


def parse_send_request(raw: bytes, header_key: str | None) -> SendRequest:
    data = _json_object(raw)
    try:
        return _send_request(data, header_key)
    except InvalidRequest as exc:
        exc.to = data["to"] if isinstance(data.get("to"), str) else None
        raise


def _send_request(data: dict, header_key: str | None) -> SendRequest:
    for name in FIELDS:
        if name in data and data[name] is None:
            raise InvalidRequest(Outcome.INVALID_REQUEST, f"{name} must not be null: leave the field out instead")
    channel = _optional_str(data, "channel")
    if channel not in ("", "email"):
        raise InvalidRequest(Outcome.INVALID_REQUEST, f"unsupported channel {channel[:40]!r}: only 'email'",
                             "unsupported channel: only 'email'")
    to = _recipient(data)
    subject = _subject(data)
    params = _params(data)
    body = resolve_body(_optional_str(data, "body"), params)
    # params.code is checked whether or not it becomes the text: one rule, which the document states as a pattern.
    if _BODY_UNSAFE.search(body) or _BODY_UNSAFE.search(params.get("code", "")):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "body and params.code must not contain control characters "
                                                "other than tab and line breaks")
    return SendRequest(
        to=to,
        subject=subject,
        body=body,
        params=params,
        template=_optional_str(data, "template"),
        locale=_optional_str(data, "locale"),
        idempotency_key=_idempotency_key(data, header_key),
        timeout_seconds=_timeout(data),
    )


def resolve_body(body: str, params: dict[str, str]) -> str:
    if body:
        return body
    if "code" in params:
        return f"Your verification code is: {params['code']}"
    return NO_CODE_BODY


def _not_json(constant: str):
    # Python's json module reads NaN, Infinity and -Infinity; RFC 8259 has no such numbers.
    raise ValueError(f"{constant} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_not_json)  # keeps no state between calls: one for every thread


def _json_object(raw: bytes) -> dict:
    try:
        data = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "body must be a JSON object")
    # JSON may carry lone surrogates ("\ud800"), which no mail can encode. Valid UTF-8 holds none, so only a
    # \u escape can make one: a body without that text needs no look.
    if b"\\u" in raw:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(Outcome.INVALID_REQUEST,
                                 "body contains invalid Unicode (a lone surrogate)") from None
    return data


def _optional_str(data: dict, name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(Outcome.INVALID_REQUEST, f"{name} must be a string")
    return value


def _recipient(data: dict) -> Mailbox:
    to = data.get("to")
    if to is not None and not isinstance(to, str):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "to must be a string")
    if not to:
        raise InvalidRequest(Outcome.INVALID_DESTINATION, "to is required")
    if _CRLF.search(to):
        raise InvalidRequest(Outcome.INVALID_DESTINATION, "to must not contain CR or LF")
    try:
        return parse_address(to, international=True)
    except InvalidAddress as exc:
        # The validator's reason can quote the address (`... of 'ex—ample'`): the log gets its leading words only.
        raise InvalidRequest(Outcome.INVALID_DESTINATION, f"to is not a valid email address: {exc}",
                             f"to is not a valid email address: {leading_words(str(exc))}") from None


def _subject(data: dict) -> str:
    subject = _optional_str(data, "subject") or DEFAULT_SUBJECT
    if _HEADER_UNSAFE.search(subject):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "subject must not contain CR or LF (nor any other line break "
                                                "or control character)")
    # Refused rather than decoded and checked: the email package decodes an encoded-word while it builds the
    # header, and what it writes then depends on the Python version (before 3.11.10, "=0D=0A" in it starts a header
    # line of the caller's; later versions re-encode it). A decoded check would have to mirror that parser exactly;
    # refusing gives one answer on every version and costs no caller anything: non-ASCII needs no encoded-words,
    # the email package encodes it itself.
    if ENCODED_WORD.search(subject):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "subject must not contain an RFC 2047 encoded-word (=?...?=): "
                                                "send the text itself, non-ASCII included")
    return subject


def _params(data: dict) -> dict[str, str]:
    params = data.get("params")
    if params is None:
        return {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "params must be an object of string values")
    return params


def _idempotency_key(data: dict, header_key: str | None) -> str | None:
    body_key = data.get("idempotency_key")
    if body_key is not None and not isinstance(body_key, str):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "idempotency_key must be a string")
    # Each key is checked before they are compared: the same bad key in both places is a bad key, not a mismatch.
    for key in (body_key, header_key):
        if key is not None and not (len(key) <= MAX_KEY_LENGTH and _KEY.fullmatch(key)):
            raise InvalidRequest(
                Outcome.INVALID_REQUEST,
                f"idempotency key must be 1-{MAX_KEY_LENGTH} visible ASCII characters (0x21-0x7E: no space, "
                "control or non-ASCII character)",
            )
    if body_key is not None and header_key is not None and body_key != header_key:
        raise InvalidRequest(Outcome.INVALID_REQUEST, "Idempotency-Key header and idempotency_key differ")
    return body_key if body_key is not None else header_key


def _timeout(data: dict) -> float | None:
    value = data.get("timeout_seconds")
    if value is None:
        return None
    if isinstance(value, float):
        # An integral float is an integer, as in JSON Schema: 10.0 is 10. A literal beyond the float range reads
        # as inf and is as integral as 10**400 (capped below), -1e400 as -10**400.
        if math.isinf(value):
            value = _MAX_TIMEOUT_SECONDS + 1 if value > 0 else -1
        elif value.is_integer():
            value = int(value)
    # bool is an int in Python; true is not a timeout.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(Outcome.INVALID_REQUEST, "timeout_seconds must be an integer")
    if value <= 0:
        raise InvalidRequest(Outcome.INVALID_REQUEST, "timeout_seconds must be positive")
    return float(min(value, _MAX_TIMEOUT_SECONDS))
