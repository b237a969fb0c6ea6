"""Email addresses: the one parser, and the masked forms that logs show.

Request validation (`to`), configuration (`SMTP_FROM`), message building and
log masking all use this module. Parsing is email-validator's syntax check
with deliverability checks off (no DNS on the request path): no quoted local
parts, no IP literals, no display names, no leading, trailing or doubled
dots, a dotted domain that is not a special-use name (.local, .invalid,
.localhost ...; .test is allowed, for test and staging setups). Non-ASCII
addresses are refused until SMTPUTF8 is supported.
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


def parse_address(text: str) -> Mailbox:
    if not text.isascii():
        raise InvalidAddress("only ASCII addresses are supported (no SMTPUTF8 or internationalised domains)")
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
