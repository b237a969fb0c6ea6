"""Email addresses: the one parser, the display-name check, and the masked forms that logs show.

Request validation (`to`), configuration (`SMTP_FROM`, `SMTP_FROM_NAME`),
message building and log masking all use this module. Parsing is
email-validator's syntax check with deliverability checks off (no DNS on the
request path): no quoted local parts, no IP literals, no display names, no
leading, trailing or doubled dots, a dotted domain that is not a special-use
name (.local, .invalid, .localhost ...; .test is allowed, for test and
staging setups), no RFC 2047 encoded-word (=?...?=), at most 64 octets before
the @ (UTF-8 counted in bytes, RFC 6531).

International addresses (`parse_address(text, international=True)`, what the
request's `to` uses):

- an internationalised domain (例子.中国) is checked and converted by
  email-validator (IDNA 2008, UTS #46) to its ASCII form (xn--fsqu00a.xn--fiqs8s),
  `Mailbox.ascii_domain`, which the envelope and the To header carry; a domain
  IDNA refuses (a symbol, mixed writing directions, invisible joiners) is refused;
- a non-ASCII local part (josé) is kept, NFC-normalised, and makes
  `Mailbox.smtputf8` true: the mail then needs SMTPUTF8 (RFC 6531), which the
  mailer asks for, or refuses the send when the server does not offer it.
  Invisible, bidi-control, space and combining-first characters are refused.

Without `international` (the default) an address must be ASCII: that is the
rule for SMTP_FROM, which goes out in every MAIL FROM whether the server offers
SMTPUTF8 or not, and for `herald-smtp doctor --to`.

Almost every address is plain ASCII (a dot-atom before the @, letters, digits
and hyphens after it): `_plain_mailbox` answers those without email-validator,
by the same rules, and every other text goes to email-validator, so its error
messages stay the ones callers see. tests/test_address_fast_path.py checks
that both give the same answer on generated addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """Not a usable mailbox; the message says what is wrong, in one sentence."""


@dataclass(frozen=True)
class Mailbox:
    """A valid address, split.

    `local` is the part before the @ as given (NFC-normalised when it is not
    ASCII); `domain` is the part after it as given; `ascii_domain` is the form
    the envelope and the To header use: the domain itself when it is ASCII
    (the caller's spelling, case included), its IDNA form otherwise.
    `str()` is the envelope address, `local@ascii_domain`: what the mailer sends
    in RCPT TO and the idempotency fingerprint hashes (for an ASCII address,
    exactly the text the caller sent).
    """

    local: str
    domain: str
    ascii_domain: str = ""  # "" when built by hand: the domain, which must then be ASCII

    def __post_init__(self) -> None:
        if not self.ascii_domain:
            if not self.domain.isascii():
                raise ValueError("a Mailbox with a non-ASCII domain needs its ascii_domain (use parse_address)")
            object.__setattr__(self, "ascii_domain", self.domain)

    @property
    def smtputf8(self) -> bool:
        """True when the local part is not ASCII: the mail can only go out with SMTPUTF8 (RFC 6531)."""
        return not self.local.isascii()

    def __str__(self) -> str:
        return f"{self.local}@{self.ascii_domain}"


# An RFC 2047 encoded-word, as loosely as the email package's header parser finds one: "=?", anything, "?=".
# The email package decodes such a word in a header value it is given as text (in a local part too, so the To
# line could name other recipients than the envelope, or break into two lines); no real mailbox or name needs one.
ENCODED_WORD = re.compile(r"=\?.*\?=")
# Line breaks of every kind and the other control characters: none belong in a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# A display name is one word when it has no spaces, and the email package cannot fold a word: the From line would
# pass RFC 5322's 998 characters. 200, doubled by quoting, plus the longest address stays far below that.
MAX_DISPLAY_NAME = 200
# RFC 5321 4.5.3.1.1, in octets: for a UTF-8 local part (RFC 6531 3.3) that is fewer characters.
MAX_LOCAL_OCTETS = 64

# The fast path's shape of a plain address, a subset of what email-validator accepts (its rfc_constants): a
# dot-atom of RFC 5322 atext before the one @; after it, at least two labels of letters, digits and inner hyphens,
# 1-63 characters each, the last one letters only. "--" (Punycode, RFC 5890's reserved R-LDH labels) is left out
# below, and so is every length or name the checks in _plain_mailbox refuse.
_ATEXT = r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_PLAIN = re.compile(rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@((?:{_LABEL}\.)+[a-zA-Z]{{1,63}})")
# RFC 3696 errata 1690, email-validator's EMAIL_MAX_LENGTH; it keeps the domain within RFC 1035's 253 too.
_MAX_ADDRESS = 254
# email-validator's reserved names (.local, .invalid, ...), as test_environment=True reads them: .test allowed.
_SPECIAL_USE = tuple(name for name in SPECIAL_USE_DOMAIN_NAMES if name != "test")


def parse_address(text: str, *, international: bool = False) -> Mailbox:
    """Check one plain address; InvalidAddress says what is wrong.

    international=False (SMTP_FROM, doctor): ASCII only. international=True (the
    request's `to`): internationalised domains and, for SMTPUTF8, non-ASCII local
    parts too; every other rule is the same.
    """
    if not international and not text.isascii():
        raise InvalidAddress("only ASCII addresses are supported here (no SMTPUTF8 or internationalised domains)")
    if ENCODED_WORD.search(text):
        raise InvalidAddress("an address must not contain an RFC 2047 encoded-word (=?...?=)")
    return _plain_mailbox(text) or _validated_mailbox(text, international)


def _validated_mailbox(text: str, international: bool) -> Mailbox:
    """email-validator's answer: every address the fast path is not sure of, and the reason for a refusal."""
    try:
        valid = validate_email(
            text,
            check_deliverability=False,
            allow_smtputf8=international,
            allow_display_name=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_empty_local=False,
            strict=True,  # RFC 5321 limits: at most 64 characters before the @
            test_environment=True,  # lets *.test through; deliverability checks are off anyway
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    # Not email-validator's normalised form, which lower-cases the domain (and postmaster@, abuse@ ...): the caller's
    # spelling of an ASCII address is what the envelope, the headers and the fingerprint have always used.
    local, _, domain = text.rpartition("@")
    if not local.isascii():
        local = valid.local_part  # NFC, as RFC 6532 3.1 asks; email-validator checked that form too
    # email-validator counts characters; RFC 6531 keeps RFC 5321's limit in octets.
    if len(local.encode("utf-8")) > MAX_LOCAL_OCTETS:
        raise InvalidAddress(f"the part before the @ is {len(local.encode('utf-8'))} bytes long in UTF-8; at most "
                             f"{MAX_LOCAL_OCTETS} are allowed")
    return Mailbox(local, domain, domain if domain.isascii() else valid.ascii_domain)


def _plain_mailbox(text: str) -> Mailbox | None:
    """The Mailbox of a plain ASCII address, without email-validator; None when the text is anything else (or
    when this is unsure): email-validator then decides, and says what is wrong."""
    if len(text) > _MAX_ADDRESS or not text.isascii():
        return None
    match = _PLAIN.fullmatch(text)
    if match is None:
        return None
    local, domain = match.groups()
    if len(local) > MAX_LOCAL_OCTETS or "--" in domain:
        return None
    # email-validator compares names after UTS #46 mapping, which for these characters is lower-casing.
    lowered = domain.lower()
    if any(lowered == name or lowered.endswith("." + name) for name in _SPECIAL_USE):
        return None
    return Mailbox(local, domain, domain)


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
    # The domain is shown to correlate; text after an @ that is no domain (a refused `to`) may be anything.
    return f"{local[:1]}***@{domain[:100] if _DOMAIN_LIKE.fullmatch(domain) else '***'}"


# No space, control character or separator: a domain, IDN included (combining marks too), and not free text.
_DOMAIN_LIKE = re.compile(r"[^\s\x00-\x1f\x7f@<>()\[\]\\,;:\"'`]{1,253}")
_ADDRESS_IN_TEXT = re.compile(r"[^\s<>@\"',;:()]+@[A-Za-z0-9.-]+")


def mask_addresses(text: str) -> str:
    """Mask every address in free text, e.g. an SMTP reply quoting the recipient."""
    return _ADDRESS_IN_TEXT.sub(lambda m: mask_email(m.group(0)), text)


# Second-level labels under which registrations sit one level deeper (example.co.uk, example.com.au): the
# common cases of the Public Suffix List, which herald-smtp does not ship. A domain under another such
# suffix is taken one level too high, which can only make an alignment warning appear, never hide one.
_SECOND_LEVEL_SUFFIXES = {"co", "com", "net", "org", "gov", "edu", "ac", "ne", "or", "go", "gob", "nic", "ltd", "plc"}


def organisational_domain(domain: str) -> str:
    """The registered domain DMARC aligns on (RFC 7489 3.2), approximately: mail.example.com -> example.com,
    mail.example.co.uk -> example.co.uk."""
    labels = domain.lower().rstrip(".").split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL_SUFFIXES else 2
    return ".".join(labels[-keep:])


def aligned(first: str, second: str) -> bool:
    """Relaxed DMARC alignment: both domains under one organisational domain."""
    return organisational_domain(first) == organisational_domain(second)
