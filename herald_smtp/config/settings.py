"""Settings: the one configuration object (and its parts: Rate, Relay), with how each field is shown.

A field holding a secret is declared with secret(): out of repr(), and on the startup line (redacted())
only as set/unset or a masked URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, Callable
from urllib.parse import urlsplit

from ..addresses import Mailbox, parse_address
from ..network import host_port
from ..redis_target import RedisTarget, backend_for, parse_redis_url
from .bounce_mailbox import BounceMailbox, parse_bounce_mailbox
from .dkim import DkimKey, load_dkim_key
from .oauth import AuthMechanism, OAuthClient, oauth_client

SERVICE_NAME = "herald-smtp"


@dataclass(frozen=True)
class Rate:
    """A rate limit: at most `amount` sends in any `seconds` (sending/abuse.py applies it)."""

    amount: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.amount}/{self.seconds}s"


class TlsMode(StrEnum):
    """How a relay's connection is secured: STARTTLS required, TLS from the first byte, or none at all.

    A StrEnum: each member equals (and prints as) its string, which the logs and older comparisons use.
    """

    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    PLAIN = "plain"


# The names the transport and the doctor import.
STARTTLS, IMPLICIT_TLS, PLAIN = TlsMode.STARTTLS, TlsMode.IMPLICIT, TlsMode.PLAIN


class FailureMode(StrEnum):
    """IDEMPOTENCY_FAILURE_MODE: with the store down, send without idempotency (open) or refuse (closed)."""

    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Relay:
    """One SMTP relay: where to connect, how to secure and log in, and who the mail is from.

    The primary relay comes from the SMTP_* settings, the fallbacks from SMTP_FALLBACK_URLS
    (Settings.relays); every relay goes through the same transport, pool and breaker code.
    """

    host: str
    port: int
    tls: TlsMode = TlsMode.STARTTLS
    user: str = ""
    password: str = field(default="", repr=False)
    from_address: str = ""  # the envelope sender and the From header's address ("" in a URL: SMTP_FROM)
    from_name: str = ""
    # None in a parsed URL: inherit SMTP_TLS_VERIFY / SMTP_TLS_CA_FILE (Settings.relays fills them in).
    tls_verify: bool | None = True
    ca_file: str | None = ""
    oauth: OAuthClient | None = None  # log in with a bearer token (XOAUTH2/OAUTHBEARER) instead of the password
    mechanism: AuthMechanism = AuthMechanism.AUTO
    bounce_address: str = ""  # SMTP_BOUNCE_ADDRESS: the envelope sender, where notifications go ("": from_address)

    @property
    def envelope_sender(self) -> str:
        """MAIL FROM: where relays send delivery status notifications (SMTP_BOUNCE_ADDRESS, else the From)."""
        return self.bounce_address or self.from_address

    @property
    def name(self) -> str:
        """host:port, as logs, metrics (the `relay` label) and /readyz name the relay."""
        return host_port(self.host, self.port)

    @property
    def logs_in(self) -> bool:
        return bool(self.user)

    def redacted(self) -> dict:
        shown: dict = {"relay": self.name, "tls": self.tls, "user": self.user, "from": self.from_address,
                       "envelope_sender": self.envelope_sender, "auth_mechanism": self.mechanism}
        if self.oauth is not None:
            shown["oauth"] = self.oauth.redacted()
        else:
            shown["password"] = "set" if self.password else "unset"
        return shown


# Field metadata: how the startup line shows a value (Settings.redacted), and whether it is a secret.
_SHOWN, _SECRET = "shown", "secret"


def _as_is(value: object) -> object:
    return value


def _set_or_unset(value: object) -> str:
    return "set" if value else "unset"


def secret(default: object = "", shown: Callable[[Any], object] | None = _set_or_unset):
    """A Settings field holding a secret: left out of repr(), and on the startup line only as `shown` makes it
    (set/unset unless told otherwise). Declared with the field, so a new secret cannot be forgotten in a list."""
    return field(default=default, repr=False, metadata={_SECRET: True, _SHOWN: shown})


def shown_as(shown: Callable[[Any], object] | None, default: object):
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
    smtp_bounce_address: str = ""  # the envelope sender of every relay ("": each relay's From)
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
    # OAuth 2.0 instead of SMTP_PASSWORD (config/oauth.py); the startup line shows the relay's `oauth` block.
    smtp_oauth_token_url: str = secret(shown=None)
    smtp_oauth_client_id: str = shown_as(None, "")
    smtp_oauth_client_secret: str = secret(shown=None)
    smtp_oauth_scope: str = shown_as(None, "")
    smtp_oauth_refresh_token: str = secret(shown=None)
    smtp_oauth_provider: str = ""
    smtp_oauth_tenant: str = ""
    smtp_auth_mechanism: AuthMechanism = AuthMechanism.AUTO
    # SMTP_FALLBACK_URLS, in order; see `relays` (the startup line's list). Relay.password is out of repr().
    smtp_fallbacks: tuple[Relay, ...] = shown_as(None, ())
    redis_url: str = secret(shown=_redact_redis_url)  # may hold passwords
    redis_key_prefix: str = "herald-smtp:"
    redis_tls_ca_file: str = ""  # rediss:// only: a CA bundle added to the system's
    redis_tls_verify: bool = True  # rediss:// only: false is for tests (startup warns)
    idempotency_secret: str = secret()  # keys the payload fingerprints in the store (sending/fingerprint.py)
    idempotency_ttl_seconds: int = 300
    idempotency_wait_seconds: float = 10.0
    idempotency_failure_mode: FailureMode = FailureMode.OPEN
    message_status_ttl_seconds: int = 7 * 24 * 3600  # how long GET /v1/messages/{id} knows an accepted mail
    suppression_ttl_seconds: int = 7 * 24 * 3600  # how long a permanently refused recipient is refused at once; 0: off
    # DKIM signing (config/dkim.py): off while DKIM_PRIVATE_KEY_FILE is empty. The file's path is shown, never the key.
    dkim_private_key_file: str = ""
    dkim_selector: str = ""
    dkim_domain: str = ""  # "": each mail is signed for its own From domain
    # The resolver the doctor's sender domain checks ask, (IP, port); None: the system's.
    dns_resolver: tuple[str, int] | None = shown_as(lambda resolver: host_port(*resolver) if resolver else "system",
                                                     None)
    # The bounce reader (`herald-smtp bounces`, config/bounce_mailbox.py); off while BOUNCE_IMAP_URL is empty.
    bounce_imap_url: str = secret(shown=lambda url: _redact_url(url) or "unset")
    bounce_imap_tls_ca_file: str = ""
    bounce_imap_tls_verify: bool = True
    bounce_poll_seconds: float = 60.0  # between passes when the server has no IDLE; the longest IDLE otherwise
    bounce_reader_port: int = 8086  # the reader's /healthz, /readyz and /metrics
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
    def dkim(self) -> DkimKey | None:
        """The DKIM key read and checked at load time; None: mails are not signed here."""
        if not self.dkim_private_key_file:
            return None
        return load_dkim_key(self.dkim_private_key_file, self.dkim_selector, self.dkim_domain)

    @cached_property
    def bounce_mailbox(self) -> BounceMailbox | None:
        """BOUNCE_IMAP_URL parsed (it was validated at load time); None: no bounce reader."""
        return parse_bounce_mailbox(self.bounce_imap_url) if self.bounce_imap_url else None

    @cached_property
    def smtp_oauth(self) -> OAuthClient | None:
        """The primary relay's OAuth client (validated at load time); None: it logs in with SMTP_PASSWORD, if any."""
        if not any((self.smtp_oauth_token_url, self.smtp_oauth_provider, self.smtp_oauth_client_id,
                    self.smtp_oauth_client_secret, self.smtp_oauth_scope, self.smtp_oauth_refresh_token,
                    self.smtp_oauth_tenant)):
            return None
        return oauth_client(token_url=self.smtp_oauth_token_url, client_id=self.smtp_oauth_client_id,
                            client_secret=self.smtp_oauth_client_secret, scope=self.smtp_oauth_scope,
                            refresh_token=self.smtp_oauth_refresh_token, provider=self.smtp_oauth_provider,
                            tenant=self.smtp_oauth_tenant)

    @cached_property
    def relays(self) -> tuple[Relay, ...]:
        """The primary relay (from the SMTP_* settings), then the fallbacks with what they inherit."""
        tls = (TlsMode.IMPLICIT if self.smtp_use_tls else TlsMode.STARTTLS if self.smtp_use_starttls
               else TlsMode.PLAIN)
        primary = Relay(self.smtp_host, self.smtp_port, tls, self.smtp_user, self.smtp_password, self.smtp_from,
                        self.smtp_from_name, self.smtp_tls_verify, self.smtp_tls_ca_file, self.smtp_oauth,
                        self.smtp_auth_mechanism, self.smtp_bounce_address)
        return (primary,) + tuple(replace(
            relay,
            from_address=relay.from_address or self.smtp_from,
            from_name=relay.from_name or self.smtp_from_name,
            bounce_address=self.smtp_bounce_address,
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
        return host_port(self.host, self.port)

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
        out["dkim"] = self.dkim.describe() if self.dkim else "off"  # what the key is, never the key
        out["relays"] = [relay.redacted() for relay in self.relays] if self.smtp_host else []
        return out

