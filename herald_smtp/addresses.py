"""Email addresses: the one parser, the display-name check, and the masked forms that logs show.

Request validation (`to`), configuration (`SMTP_FROM`, `SMTP_FROM_NAME`),
message building and log masking all use this module. Parsing is
email-validator's syntax check with deliverability checks off (no DNS on the
request path): no quoted local parts, no IP literals, no display names, no
leading, trailing or doubled dots, a dotted domain that is not a special-use
name (.local, .invalid, .localhost ...; .test is allowed, for test and
staging setups), no RFC 2047 encoded-word (=?...?=). Non-ASCII addresses are
refused until SMTPUTF8 is supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """Not a usable mailbox; the message says what is wrong, in one sentence."""


@dataclass(frozen=True)
class Mailbox:
    """A valid address, split; both parts as given (the parser only checks them)."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


# An RFC 2047 encoded-word, as loosely as the email package's header parser finds one: "=?", anything, "?=".
# The email package decodes such a word in a header value it is given as text (in a local part too, so the To
# line could name other recipients than the envelope, or break into two lines); no real mailbox or name needs one.
ENCODED_WORD = re.compile(r"=\?.*\?=")
# Line breaks of every kind and the other control characters: none belong in a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# A display name is one word when it has no spaces, and the email package cannot fold a word: the From line would
# pass RFC 5322's 998 characters. 200, doubled by quoting, plus the longest address stays far below that.
MAX_DISPLAY_NAME = 200


def parse_address(text: str) -> Mailbox:
    if not text.isascii():
        raise InvalidAddress("only ASCII addresses are supported (no SMTPUTF8 or internationalised domains)")
    if ENCODED_WORD.search(text):
        raise InvalidAddress("an address must not contain an RFC 2047 encoded-word (=?...?=)")
    try:
        validate_email(
            text,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_display_name=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_empty_local=False,
            strict=True,  # RFC 5321 limits: at most 64 characters before the @
            test_environment=True,  # lets *.test through; deliverability checks are off anyway
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    # Not email-validator's normalised form, which lower-cases the domain: the caller's spelling is what the envelope,
    # the headers and the fingerprint have always used.
    local, _, domain = text.rpartition("@")
    return Mailbox(local, domain)


def check_display_name(name: str) -> str:
    """The name shown before a sender's address (SMTP_FROM_NAME), returned as given when the From line can hold it."""
    if len(name) > MAX_DISPLAY_NAME:
        raise InvalidAddress(f"a display name of at most {MAX_DISPLAY_NAME} characters")
    if _CONTROL.search(name):
        raise InvalidAddress("a display name without line breaks or other control characters")
    if ENCODED_WORD.search(name):
        raise InvalidAddress("a display name without an RFC 2047 encoded-word (=?...?=): the text itself, non-ASCII "
                             "included")
    return name


def mask_email(address: str) -> str:
    """j***@example.com: enough to correlate, not enough to harvest. Works on any text, valid or not."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain[:100]}"


_ADDRESS_IN_TEXT = re.compile(r"[^\s<>@\"',;:()]+@[A-Za-z0-9.-]+")


def mask_addresses(text: str) -> str:
    """Mask every address in free text, e.g. an SMTP reply quoting the recipient."""
    return _ADDRESS_IN_TEXT.sub(lambda m: mask_email(m.group(0)), text)
