"""Settings: the one configuration object, read from the environment and `.env`.

Everything is parsed and validated once, at startup. A bad value raises
ConfigError whose message is one line naming the variable and the expected
form; the entry points print it and exit. Secret values never appear in
those messages.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Callable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from dotenv import dotenv_values
from limits.util import granularity_from_string

from .addresses import InvalidAddress, Mailbox, check_display_name, parse_address
from .redis_target import RedisTarget, backend_for, parse_redis_url

SERVICE_NAME = "herald-smtp"

LOG_LEVELS = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
}


class ConfigError(ValueError):
    """A configuration variable holds a value we cannot use."""


@dataclass(frozen=True)
class Rate:
    """A rate limit: at most `amount` sends in any `seconds` (sending/abuse.py applies it)."""

    amount: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.amount}/{self.seconds}s"


# Relay TLS modes: STARTTLS required, TLS from the first byte, or none at all.
STARTTLS, IMPLICIT_TLS, PLAIN = "starttls", "implicit", "plain"


@dataclass(frozen=True)
class Relay:
    """One SMTP relay: where to connect, how to secure and log in, and who the mail is from.

    The primary relay comes from the SMTP_* settings, the fallbacks from SMTP_FALLBACK_URLS
    (Settings.relays); every relay goes through the same transport, pool and breaker code.
    """

    host: str
    port: int
    tls: str = STARTTLS  # STARTTLS, IMPLICIT_TLS or PLAIN
    user: str = ""
    password: str = field(default="", repr=False)
    from_address: str = ""  # the envelope sender and the From header's address ("" in a URL: SMTP_FROM)
    from_name: str = ""
    # None in a parsed URL: inherit SMTP_TLS_VERIFY / SMTP_TLS_CA_FILE (Settings.relays fills them in).
    tls_verify: bool | None = True
    ca_file: str | None = ""

    @property
    def name(self) -> str:
        """host:port, as logs, metrics (the `relay` label) and /readyz name the relay."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def redacted(self) -> dict:
        return {"relay": self.name, "tls": self.tls, "user": self.user,
                "password": "set" if self.password else "unset", "from": self.from_address}


# Field metadata: how the startup line shows a value (Settings.redacted), and whether it is a secret.
_SHOWN, _SECRET = "shown", "secret"


def _as_is(value: object) -> object:
    return value


def _set_or_unset(value: object) -> str:
    return "set" if value else "unset"


def secret(default: object = "", shown: Callable[[object], object] = _set_or_unset):
    """A Settings field holding a secret: left out of repr(), and on the startup line only as `shown` makes it
    (set/unset unless told otherwise). Declared with the field, so a new secret cannot be forgotten in a list."""
    return field(default=default, repr=False, metadata={_SECRET: True, _SHOWN: shown})


def shown_as(shown: Callable[[object], object] | None, default: object):
    """A field the startup line shows through `shown` (None: not at all, something else describes it)."""
    return field(default=default, metadata={_SHOWN: shown})


def _rate_or_off(rate: Rate | None) -> str:
    return str(rate) if rate else "off"


def _redact_url(url: str, keep: tuple[str, ...] = ()) -> str:
    """The URL for the startup line: the userinfo password and every query value (but those named in `keep`)
    as ***, no fragment. redis://u:pw@h/0?db=1&password=x -> redis://u:***@h/0?db=1&password=***

    Also the Sentinel and Cluster forms with several hosts (redis+cluster://:pw@h1:1,h2:2).
    """
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not shown: not a URL)"  # urllib's error would quote the netloc
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if has_password else netloc
    query = "&".join(_redact_parameter(pair, keep) for pair in parts.query.split("&")) if parts.query else ""
    # Not urlunsplit: it drops the // of unix:///path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _redact_parameter(pair: str, keep: tuple[str, ...]) -> str:
    name, has_value, _ = pair.partition("=")
    if not has_value:
        return "***"  # a bare ?TOKEN is all value
    return pair if name in keep else f"{name}=***"


def _redact_redis_url(url: str) -> str:
    return _redact_url(url, keep=("db",))  # the grammar refuses any parameter but db and the passwords


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8084
    api_keys: tuple[str, ...] = secret(())
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = secret()
    smtp_from: str = ""
    smtp_from_name: str = ""
    smtp_use_starttls: bool = True
    smtp_use_tls: bool = False
    smtp_tls_verify: bool = True
    smtp_tls_ca_file: str = ""
    smtp_timeout_seconds: float = 10.0
    smtp_retries: int = 2
    smtp_idle_seconds: float = 30.0
    smtp_max_messages_per_connection: int = 100
    smtp_circuit_threshold: int = 5
    smtp_circuit_cooldown_seconds: float = 30.0
    # SMTP_FALLBACK_URLS, in order; see `relays` (the startup line's list). Relay.password is out of repr().
    smtp_fallbacks: tuple[Relay, ...] = shown_as(None, ())
    redis_url: str = secret(shown=_redact_redis_url)  # may hold passwords
    redis_key_prefix: str = "herald-smtp:"
    redis_tls_ca_file: str = ""  # rediss:// only: a CA bundle added to the system's
    redis_tls_verify: bool = True  # rediss:// only: false is for tests (startup warns)
    idempotency_secret: str = secret()  # keys the payload fingerprints in the store (sending/fingerprint.py)
    idempotency_ttl_seconds: int = 300
    idempotency_wait_seconds: float = 10.0
    idempotency_failure_mode: str = "open"
    max_request_bytes: int = 65536
    # Abuse limits (sending/abuse.py): None is off; () allows every recipient domain.
    rate_limit_per_recipient: Rate | None = shown_as(_rate_or_off, None)
    rate_limit_global: Rate | None = shown_as(_rate_or_off, None)
    allowed_recipient_domains: tuple[str, ...] = ()  # lower-cased
    log_level: str = "INFO"
    log_format: str = "json"
    web_concurrency: int = 0  # 0: derived from the CPU count, see workers()
    web_threads: int = 4
    # prometheus_client's own variable; tools/serve.py sets it when it is empty.
    metrics_dir: str = ""
    # OpenTelemetry's own variables (tracing.py), read from the process environment only: the SDK and the
    # exporter read them there, and the rest (headers, sampler, timeouts) they read themselves.
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT; may carry a token (?api-key=...).
    otel_endpoint: str = secret(shown=_redact_url)
    otel_sdk_disabled: bool = False
    otel_service_name: str = SERVICE_NAME
    otel_protocol: str = "http/protobuf"

    @property
    def tracing_enabled(self) -> bool:
        """Tracing is on when an OTLP endpoint is set and OTEL_SDK_DISABLED is not true."""
        return bool(self.otel_endpoint) and not self.otel_sdk_disabled

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host and self.smtp_from)

    @cached_property
    def sender(self) -> Mailbox:
        """SMTP_FROM parsed once (it was validated at load time); only read once SMTP is configured."""
        return parse_address(self.smtp_from)

    @cached_property
    def redis_target(self) -> RedisTarget | None:
        """REDIS_URL parsed (it was validated at load time); None for the in-process store."""
        return parse_redis_url(self.redis_url, self.redis_tls_ca_file, self.redis_tls_verify)

    @cached_property
    def relays(self) -> tuple[Relay, ...]:
        """The primary relay (from the SMTP_* settings), then the fallbacks with what they inherit."""
        tls = IMPLICIT_TLS if self.smtp_use_tls else STARTTLS if self.smtp_use_starttls else PLAIN
        primary = Relay(self.smtp_host, self.smtp_port, tls, self.smtp_user, self.smtp_password, self.smtp_from,
                        self.smtp_from_name, self.smtp_tls_verify, self.smtp_tls_ca_file)
        return (primary,) + tuple(replace(
            relay,
            from_address=relay.from_address or self.smtp_from,
            from_name=relay.from_name or self.smtp_from_name,
            tls_verify=self.smtp_tls_verify if relay.tls_verify is None else relay.tls_verify,
            ca_file=self.smtp_tls_ca_file if relay.ca_file is None else relay.ca_file,
        ) for relay in self.smtp_fallbacks)

    @property
    def store_is_shared(self) -> bool:
        """False for the in-process store (REDIS_URL empty or memory://)."""
        return backend_for(self.redis_url) != "memory"

    @property
    def bind(self) -> str:
        """gunicorn's form: an IPv6 address in brackets, or its colons would be read as the port's."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def workers(self) -> int:
        """Gunicorn worker processes: one without Redis, whose cache is per process."""
        if not self.store_is_shared:
            return 1
        if self.web_concurrency:
            return self.web_concurrency
        return (os.cpu_count() or 1) * 2 + 1

    def redacted(self) -> dict:
        """The effective configuration for the startup line, each field as its declaration says (secret() or
        shown_as()): secrets only as set/unset or a masked URL."""
        out = {}
        for f in fields(self):
            shown = f.metadata.get(_SHOWN, _as_is)
            if shown is not None:
                out[f.name] = shown(getattr(self, f.name))
        out["redis"] = self.redis_target.describe() if self.redis_target else "in-process"
        out["tracing"] = f"on, to {out['otel_endpoint']}" if self.tracing_enabled else "off"
        out["workers"] = self.workers()
        out["relays"] = [relay.redacted() for relay in self.relays] if self.smtp_host else []
        return out


# --- parsers: each takes the raw string and returns the value or raises ValueError
# with the expected form.

# Every number has a maximum: a value that passes here must not overflow later (400 digits of seconds are
# float("inf"), which gunicorn's int() of its timeout cannot take). Seconds settings: an hour at most.
MAX_SECONDS = 3600
MAX_TTL_SECONDS = 7 * 24 * 3600  # a replay window beyond a week is a cache, not idempotency
# What the digits of an integer setting may be: int() itself refuses more than 4300, with a message of its own.
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def _int(minimum: int, maximum: int) -> Callable[[str], int]:
    form = f"an integer >= {minimum} and <= {maximum}"

    def parse(raw: str) -> int:
        if not _INTEGER.fullmatch(raw.strip()):
            raise ValueError(form)
        value = int(raw)
        if not minimum <= value <= maximum:
            raise ValueError(form)
        return value

    return parse


def _seconds(minimum: float, maximum: float = MAX_SECONDS) -> Callable[[str], float]:
    form = f"a number of seconds > {minimum:g} and <= {maximum:g}"

    def parse(raw: str) -> float:
        if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)", raw.strip()):
            raise ValueError(form)
        value = float(raw)
        if not minimum < value <= maximum:
            raise ValueError(form)
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(" or ".join(choices))
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _ascii(parse: Callable[[str], str]) -> Callable[[str], str]:
    # smtplib's AUTH encodes credentials as ASCII; anything else fails on every send.
    def checked(raw: str) -> str:
        if not raw.isascii():
            raise ValueError("ASCII characters only (smtplib's AUTH cannot send others)")
        return parse(raw)

    return checked


def _address(raw: str) -> str:
    value = raw.strip()
    if value:
        try:
            parse_address(value)
        except InvalidAddress as exc:
            raise ValueError(f"an ASCII email address like noreply@example.com ({exc})") from None
    return value


def _port_number(raw: str) -> int:
    try:
        return _int(1, 65535)(raw)
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


def _host(raw: str) -> str:
    # Checked here, not at the first send: a typo would otherwise show only as a DNS failure per request.
    value = raw.strip()
    if not (value.isascii() and (_is_dns_name(value) or _ip_version(value))):
        raise ValueError(_HOST_FORM)
    return value


def _listen(raw: str) -> tuple[str, int]:
    # ":8084", "8084", "127.0.0.1:8084", "localhost:8084" or "[::1]:8084": only forms gunicorn can bind.
    try:
        host, port = _listen_parts(raw.strip())
        return (host or "0.0.0.0", _port_number(port))
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


def _display_name(raw: str) -> str:
    try:
        return check_display_name(raw.strip())
    except InvalidAddress as exc:
        raise ValueError(str(exc)) from None


def _api_keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _redis_url(raw: str) -> str:
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


def _rate(raw: str) -> Rate:
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


def _domains(raw: str) -> tuple[str, ...]:
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


# No word here may be a likely password fragment: tests/test_config_secrets.py checks "def" (of "default") too.
_RELAY_FORM = ("smtp://[user[:password]@]host[:port] (STARTTLS, port 587 if none is given), "
               "smtps://[user[:password]@]host[:port] (implicit TLS, port 465 if none is given) or "
               "smtp+plain://host[:port] (no TLS, no credentials), user and password percent-encoded, optional "
               "query parameters from, from_name, tls_verify, ca_file; entries separated by commas")
_RELAY_SCHEMES = {"smtp": (STARTTLS, 587), "smtps": (IMPLICIT_TLS, 465), "smtp+plain": (PLAIN, 25)}
_RELAY_PARAMETERS = ("from", "from_name", "tls_verify", "ca_file")


def _relay_urls(raw: str) -> tuple[Relay, ...]:
    """SMTP_FALLBACK_URLS: the relays tried in order after the primary."""
    relays = []
    for position, entry in enumerate(raw.split(","), start=1):
        try:
            relays.append(_relay_url(entry.strip()))
        except ValueError as exc:
            # The reason, never the entry: it may hold a password.
            raise ValueError(f"entry {position} (counting from 1) to be {_RELAY_FORM} ({exc})") from None
    return tuple(relays)


def _relay_url(entry: str) -> Relay:
    if not entry:
        raise ValueError("it is empty")
    try:
        parts = urlsplit(entry)
        given_port = parts.port  # ValueError for a port out of range or not a number
    except ValueError:
        # urllib's message may quote the netloc, password and all.
        raise ValueError("not a URL of that form: check the host and port, and percent-encode ? & # / @ in the "
                         "user and password") from None
    if parts.scheme not in _RELAY_SCHEMES:
        raise ValueError("the scheme must be smtp, smtps or smtp+plain")
    tls, default_port = _RELAY_SCHEMES[parts.scheme]
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("a relay URL has no path")
    host = _host(parts.hostname or "")
    port = _port_number(str(given_port)) if given_port is not None else default_port
    user = _ascii(_text)(unquote(parts.username or ""))
    password = unquote(parts.password or "")
    if not password.isascii():
        raise ValueError("the password must be ASCII (smtplib's AUTH cannot send others)")
    if password and not user:
        raise ValueError("a password needs a user")
    if tls == PLAIN and user:
        raise ValueError("smtp+plain takes no credentials: they would travel in clear text (use smtp:// or smtps://)")
    return Relay(host, port, tls, user, password, **_relay_parameters(parts.query))


def _relay_parameters(query: str) -> dict:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("a malformed query") from None
    names = [name for name, _ in pairs]
    unknown = sorted(set(names) - set(_RELAY_PARAMETERS))
    if unknown or len(names) != len(set(names)):
        raise ValueError(f"query parameters may be {', '.join(_RELAY_PARAMETERS)}, each once")
    given = dict(pairs)
    values = {"from_address": _relay_from(given.get("from", "")),
              "from_name": _display_name(given.get("from_name", "")),
              "tls_verify": _bool(given["tls_verify"]) if "tls_verify" in given else None,
              "ca_file": given["ca_file"].strip() if "ca_file" in given else None}
    if values["ca_file"]:
        _check_ca_file(values["ca_file"], "ca_file")
    return values


def _relay_from(raw: str) -> str:
    try:
        return _address(raw)
    except ValueError:
        # Not the validator's reason, which quotes the characters it refuses: with an unencoded ? in the
        # password, `from=` may hold password text.
        raise ValueError("from: an ASCII email address like noreply@example.com") from None


def _check_ca_file(path: str, name: str) -> None:
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError):
        raise ValueError(f"{name}: the path of a readable PEM CA bundle") from None


def _log_level(raw: str) -> str:
    return LOG_LEVELS[_choice(*LOG_LEVELS)(raw)]


def _otlp_protocol(raw: str) -> str:
    if raw.strip().lower() != "http/protobuf":
        raise ValueError("http/protobuf (the only OTLP exporter herald-smtp ships is OTLP over HTTP with protobuf)")
    return "http/protobuf"


# variable -> (Settings field, parser). Defaults live on the dataclass.
_VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "API_KEY": ("api_keys", _api_keys),
    "SMTP_HOST": ("smtp_host", _host),
    "SMTP_PORT": ("smtp_port", _port_number),
    "SMTP_USER": ("smtp_user", _ascii(_text)),
    "SMTP_PASSWORD": ("smtp_password", _ascii(lambda raw: raw)),
    "SMTP_FROM": ("smtp_from", _address),
    "SMTP_FROM_NAME": ("smtp_from_name", _display_name),
    "SMTP_USE_STARTTLS": ("smtp_use_starttls", _bool),
    "SMTP_USE_TLS": ("smtp_use_tls", _bool),
    "SMTP_TLS_VERIFY": ("smtp_tls_verify", _bool),
    "SMTP_TLS_CA_FILE": ("smtp_tls_ca_file", _text),
    "SMTP_TIMEOUT_SECONDS": ("smtp_timeout_seconds", _seconds(0)),
    "SMTP_RETRIES": ("smtp_retries", _int(0, 10)),
    "SMTP_IDLE_SECONDS": ("smtp_idle_seconds", _seconds(0)),
    "SMTP_MAX_MESSAGES_PER_CONNECTION": ("smtp_max_messages_per_connection", _int(1, 10000)),
    "SMTP_CIRCUIT_THRESHOLD": ("smtp_circuit_threshold", _int(1, 1000)),
    "SMTP_CIRCUIT_COOLDOWN_SECONDS": ("smtp_circuit_cooldown_seconds", _seconds(0)),
    "SMTP_FALLBACK_URLS": ("smtp_fallbacks", _relay_urls),
    "REDIS_URL": ("redis_url", _redis_url),
    "REDIS_KEY_PREFIX": ("redis_key_prefix", _text),
    "REDIS_TLS_CA_FILE": ("redis_tls_ca_file", _text),
    "REDIS_TLS_VERIFY": ("redis_tls_verify", _bool),
    "IDEMPOTENCY_SECRET": ("idempotency_secret", lambda raw: raw),
    "IDEMPOTENCY_TTL_SECONDS": ("idempotency_ttl_seconds", _int(1, MAX_TTL_SECONDS)),
    "IDEMPOTENCY_WAIT_SECONDS": ("idempotency_wait_seconds", _seconds(0)),
    "IDEMPOTENCY_FAILURE_MODE": ("idempotency_failure_mode", _choice("open", "closed")),
    "MAX_REQUEST_BYTES": ("max_request_bytes", _int(1024, 10 * 1024 * 1024)),  # one-time codes, not files
    "RATE_LIMIT_PER_RECIPIENT": ("rate_limit_per_recipient", _rate),
    "RATE_LIMIT_GLOBAL": ("rate_limit_global", _rate),
    "ALLOWED_RECIPIENT_DOMAINS": ("allowed_recipient_domains", _domains),
    "LOG_LEVEL": ("log_level", _log_level),
    "LOG_FORMAT": ("log_format", _choice("json", "text")),
    "WEB_CONCURRENCY": ("web_concurrency", _int(1, 256)),
    "WEB_THREADS": ("web_threads", _int(1, 256)),
    "PROMETHEUS_MULTIPROC_DIR": ("metrics_dir", _text),
    # The traces endpoint wins over the general one, as in the SDK: it comes later and overwrites.
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("otel_endpoint", _text),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("otel_endpoint", _text),
    "OTEL_SDK_DISABLED": ("otel_sdk_disabled", _bool),
    "OTEL_SERVICE_NAME": ("otel_service_name", _text),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("otel_protocol", _otlp_protocol),
}

# Read from the process environment only, never from `.env`: the libraries that use them
# (prometheus_client, the OpenTelemetry SDK) read nothing else.
_PROCESS_ONLY = ("PROMETHEUS_MULTIPROC_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL")


def load_settings(environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
    """Build Settings from `.env` overlaid by the environment (the environment wins)."""
    source: dict[str, str] = {}
    if dotenv_path and os.path.isfile(dotenv_path):
        source.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        for name in _PROCESS_ONLY:
            source.pop(name, None)
    source.update(os.environ if environ is None else environ)
    return settings_from(source)


def settings_from(source: Mapping[str, str]) -> Settings:
    values: dict[str, object] = {}
    for name, (field_name, parse) in _VARIABLES.items():
        raw = source.get(name)
        if raw is None or raw.strip() == "":
            continue  # unset or empty: the default
        try:
            values[field_name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: expected {exc}") from None
    raw_port = source.get("PORT", "")
    if raw_port.strip():
        try:
            values["host"], values["port"] = _listen(raw_port)
        except ValueError as exc:
            raise ConfigError(f"PORT: expected {exc}") from None
    if values.get("smtp_use_tls") and "smtp_use_starttls" not in values:
        # SMTP_USE_TLS=true alone means implicit TLS; STARTTLS is only on by default.
        values["smtp_use_starttls"] = False
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def _check_combinations(settings: Settings) -> None:
    if settings.smtp_use_tls and settings.smtp_use_starttls:
        raise ConfigError(
            "SMTP_USE_TLS, SMTP_USE_STARTTLS: expected at most one true "
            "(SMTP_USE_TLS=true for implicit TLS, usually port 465; SMTP_USE_STARTTLS=true for port 587)"
        )
    if settings.smtp_tls_ca_file:
        try:
            _check_ca_file(settings.smtp_tls_ca_file, "SMTP_TLS_CA_FILE")
        except ValueError:
            raise ConfigError("SMTP_TLS_CA_FILE: expected the path of a readable PEM CA bundle") from None
    if settings.smtp_password and not settings.smtp_user:
        raise ConfigError("SMTP_USER: expected a user name when SMTP_PASSWORD is set")
    _check_redis_tls(settings)
    _check_tracing(settings)


# What tracing.py imports when tracing is on (the `otel` extra).
_OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                 "opentelemetry.instrumentation.flask", "opentelemetry.instrumentation.redis")


def _check_tracing(settings: Settings) -> None:
    if not settings.tracing_enabled:
        return  # nothing of OpenTelemetry is looked up, let alone imported
    for module in _OTEL_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT: tracing is on but the OpenTelemetry packages are not "
                              "installed; pip install 'herald-smtp[otel]' (or unset the variable)")


def _check_redis_tls(settings: Settings) -> None:
    # A TLS option on a plain URL means the operator believes the connection is encrypted: it is not.
    tls_options = {"REDIS_TLS_CA_FILE": bool(settings.redis_tls_ca_file),
                   "REDIS_TLS_VERIFY": not settings.redis_tls_verify}
    target = settings.redis_target
    for name, is_set in tls_options.items():
        if is_set and not (target and target.tls):
            raise ConfigError(f"{name}: expected only with a rediss:// REDIS_URL "
                              "(rediss://[[user]:password@]host[:port][/db]); REDIS_URL has no TLS")
    if settings.redis_tls_ca_file:
        try:
            ssl.create_default_context(cafile=settings.redis_tls_ca_file)
        except (OSError, ssl.SSLError):
            raise ConfigError("REDIS_TLS_CA_FILE: expected the path of a readable PEM CA bundle") from None


def load_settings_or_exit() -> Settings:
    """For entry points: a bad value ends the process with one line on stderr."""
    try:
        return load_settings()
    except ConfigError as exc:
        raise SystemExit(f"herald-smtp: configuration error: {exc}") from None
