"""The parsers of single settings: each takes the raw string and returns the value, or raises ValueError
whose text is the expected form (loading.py puts the variable's name in front). Never the value itself.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from enum import StrEnum
from typing import Callable

from limits.util import granularity_from_string

from ..addresses import InvalidAddress, check_display_name, parse_address
from ..redis_target import parse_redis_url
from .bounce_mailbox import parse_bounce_mailbox
from .settings import Rate

LOG_LEVELS = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
}


# Every number has a maximum: a value that passes here must not overflow later (400 digits of seconds are
# float("inf"), which gunicorn's int() of its timeout cannot take). Seconds settings: an hour at most.
MAX_SECONDS = 3600
MAX_TTL_SECONDS = 7 * 24 * 3600  # a replay window beyond a week is a cache, not idempotency
# What the digits of an integer setting may be: int() itself refuses more than 4300, with a message of its own.
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    form = f"an integer >= {minimum} and <= {maximum}"

    def parse(raw: str) -> int:
        if not _INTEGER.fullmatch(raw.strip()):
            raise ValueError(form)
        value = int(raw)
        if not minimum <= value <= maximum:
            raise ValueError(form)
        return value

    return parse


def seconds(minimum: float, maximum: float = MAX_SECONDS) -> Callable[[str], float]:
    form = f"a number of seconds > {minimum:g} and <= {maximum:g}"

    def parse(raw: str) -> float:
        if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)", raw.strip()):
            raise ValueError(form)
        value = float(raw)
        if not minimum < value <= maximum:
            raise ValueError(form)
        return value

    return parse


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(" or ".join(choices))
        return value

    return parse


def member(enum: type[StrEnum]) -> Callable[[str], StrEnum]:
    """One of a StrEnum's values, any case."""
    def parse(raw: str) -> StrEnum:
        return enum(choice(*enum)(raw))

    return parse


def text(raw: str) -> str:
    return raw.strip()


def ascii_only(parse: Callable[[str], str]) -> Callable[[str], str]:
    # smtplib's AUTH encodes credentials as ASCII; anything else fails on every send.
    def checked(raw: str) -> str:
        if not raw.isascii():
            raise ValueError("ASCII characters only (smtplib's AUTH cannot send others)")
        return parse(raw)

    return checked


def address(raw: str) -> str:
    value = raw.strip()
    if value:
        try:
            parse_address(value)
        except InvalidAddress as exc:
            raise ValueError(f"an ASCII email address like noreply@example.com ({exc})") from None
    return value


def port_number(raw: str) -> int:
    try:
        return integer(1, 65535)(raw)
    except ValueError:
        raise ValueError("a port number 1-65535") from None


# One DNS label: letters, digits, hyphens (not first or last) and underscores, which Docker and Compose service
# names may carry and resolvers accept.
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_HOST_FORM = ("a host name, an IPv4 address or an IPv6 address without brackets (ASCII: dot-separated labels of "
             "1-63 letters, digits, hyphens or underscores, at most 253 characters)")


def _is_dns_name(value: str) -> bool:
    labels = value.split(".")
    # A last label of digits is no top-level domain but a mistyped IPv4 address, like 192.0.2.256.
    return (len(value) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def _ip_version(value: str) -> int:
    """4 or 6 for an IP address, 0 for anything else."""
    try:
        return ipaddress.ip_address(value).version
    except ValueError:
        return 0


def host(raw: str) -> str:
    # Checked here, not at the first send: a typo would otherwise show only as a DNS failure per request.
    value = raw.strip()
    if not (value.isascii() and (_is_dns_name(value) or _ip_version(value))):
        raise ValueError(_HOST_FORM)
    return value


def listen(raw: str) -> tuple[str, int]:
    # ":8084", "8084", "127.0.0.1:8084", "localhost:8084" or "[::1]:8084": only forms gunicorn can bind.
    try:
        host, port = _listen_parts(raw.strip())
        return (host or "0.0.0.0", port_number(port))
    except ValueError:
        raise ValueError("a port like :8084, 8084, 127.0.0.1:8084 or [::1]:8084") from None


def _listen_parts(text: str) -> tuple[str, str]:
    """(host, port) of a PORT value; the host without brackets. ValueError for anything gunicorn would refuse."""
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", text)
    if bracketed:
        host, port = bracketed.groups()
        if _ip_version(host) != 6:
            raise ValueError(text)
        return host, port
    # Without brackets, a colon can only separate the port: "::1" or "::8084" is no address gunicorn can read.
    host, _, port = text.rpartition(":")
    if host and not (host.isascii() and (_ip_version(host) == 4 or _is_dns_name(host))):
        raise ValueError(text)
    return host, port


def display_name(raw: str) -> str:
    try:
        return check_display_name(raw.strip())
    except InvalidAddress as exc:
        raise ValueError(str(exc)) from None


def api_keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def domain(raw: str) -> str:
    """One domain a valid address can have (DKIM_DOMAIN), lower-cased."""
    value = raw.strip().lower()
    if not _is_recipient_domain(value):
        raise ValueError(f"a domain name like example.com ({value[:80]!r} is not the domain of a valid address)")
    return value


def resolver(raw: str) -> tuple[str, int]:
    """DNS_RESOLVER: an IP address with an optional port (53): 10.0.0.2, 127.0.0.1:5353, ::1, [::1]:5353."""
    value = raw.strip()
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::([0-9]{1,5}))?", value)
    if bracketed:
        host, port = bracketed[1], bracketed[2]
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    form = "an IP address with an optional port, like 10.0.0.2, 127.0.0.1:5353 or [::1]:5353"
    if not _ip_version(host):
        raise ValueError(form)
    try:
        return host, port_number(port) if port else 53
    except ValueError:
        raise ValueError(form) from None


def bounce_imap_url(raw: str) -> str:
    value = raw.strip()
    parse_bounce_mailbox(value)  # ValueError naming the form, never the URL (it holds the password)
    return value


def redis_url(raw: str) -> str:
    value = raw.strip()
    parse_redis_url(value)  # ValueError naming the accepted schemes, or the scheme's form
    return value


# The moving window keeps one timestamp per send in the window (a Redis list), so the count is bounded; a window
# beyond a day is no abuse limit any more.
MAX_RATE_AMOUNT = 100_000
MAX_RATE_WINDOW_SECONDS = 24 * 3600
# "5/60s", or limits' own notation "5/minute", "5/2 minutes" (but not its "5 per minute" or "1/s;5/m" lists).
_RATE = re.compile(r"([0-9]{1,7})\s*/\s*([0-9]{1,7})?\s*([A-Za-z]+)")
_RATE_FORM = (f"a rate like 5/60s or 5/minute: 1-{MAX_RATE_AMOUNT} sends per window of 1 s to 1 day "
              "(Ns, or [N] second, minute, hour or day)")


def rate(raw: str) -> Rate:
    match = _RATE.fullmatch(raw.strip())
    if not match:
        raise ValueError(_RATE_FORM)
    amount, multiples, unit = int(match[1]), int(match[2] or 1), match[3]
    seconds = multiples * _unit_seconds(unit)
    if not (1 <= amount <= MAX_RATE_AMOUNT and 1 <= seconds <= MAX_RATE_WINDOW_SECONDS):
        raise ValueError(_RATE_FORM)
    return Rate(amount, seconds)


def _unit_seconds(unit: str) -> int:
    if unit.lower() == "s":
        return 1
    try:
        return granularity_from_string(unit).GRANULARITY.seconds
    except ValueError:
        raise ValueError(_RATE_FORM) from None


def domains(raw: str) -> tuple[str, ...]:
    """ALLOWED_RECIPIENT_DOMAINS: each entry a domain that an address accepted as `to` can have."""
    entries = [entry.strip() for entry in raw.split(",")]
    for entry in entries:
        if not _is_recipient_domain(entry):
            raise ValueError(f"comma-separated domain names like example.com,example.org ({entry[:80]!r} is not "
                             "the domain of a valid address)")
    return tuple(dict.fromkeys(entry.lower() for entry in entries))


def _is_recipient_domain(entry: str) -> bool:
    # The one address parser decides: an entry no accepted recipient could have (a typo, "@example.com",
    # "localhost", "corp.local") would silently refuse everyone it was meant to allow.
    try:
        return bool(entry) and "@" not in entry and parse_address(f"postmaster@{entry}").domain == entry
    except InvalidAddress:
        return False


def check_ca_file(path: str) -> None:
    """The one CA-bundle check (SMTP_TLS_CA_FILE, a fallback's ca_file, REDIS_TLS_CA_FILE): loadable by ssl."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError):
        raise ValueError("the path of a readable PEM CA bundle") from None


def log_level(raw: str) -> str:
    return LOG_LEVELS[choice(*LOG_LEVELS)(raw)]


def otlp_protocol(raw: str) -> str:
    if raw.strip().lower() != "http/protobuf":
        raise ValueError("http/protobuf (the only OTLP exporter herald-smtp ships is OTLP over HTTP with protobuf)")
    return "http/protobuf"

