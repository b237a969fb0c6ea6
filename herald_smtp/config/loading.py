"""Loading: the variables read from the environment and `.env`, each into its Settings field through its
parser, then the checks that span several variables. A bad value raises ConfigError, one line naming the
variable and the expected form; the entry points print it and exit.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Mapping

from dotenv import dotenv_values

from ..timing import minimum_ttl_seconds, reservation_hold_seconds
from . import dkim, oauth, parsers
from .relay_urls import relay_urls
from .settings import FailureMode, Settings


class ConfigError(ValueError):
    """A configuration variable holds a value we cannot use."""


# variable -> (Settings field, parser). Defaults live on the dataclass.
_VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "API_KEY": ("api_keys", parsers.api_keys),
    "SMTP_HOST": ("smtp_host", parsers.host),
    "SMTP_PORT": ("smtp_port", parsers.port_number),
    "SMTP_USER": ("smtp_user", parsers.ascii_only(parsers.text)),
    "SMTP_PASSWORD": ("smtp_password", parsers.ascii_only(lambda raw: raw)),
    "SMTP_FROM": ("smtp_from", parsers.address),
    "SMTP_FROM_NAME": ("smtp_from_name", parsers.display_name),
    "SMTP_BOUNCE_ADDRESS": ("smtp_bounce_address", parsers.address),
    "SMTP_USE_STARTTLS": ("smtp_use_starttls", parsers.boolean),
    "SMTP_USE_TLS": ("smtp_use_tls", parsers.boolean),
    "SMTP_TLS_VERIFY": ("smtp_tls_verify", parsers.boolean),
    "SMTP_TLS_CA_FILE": ("smtp_tls_ca_file", parsers.text),
    "SMTP_TIMEOUT_SECONDS": ("smtp_timeout_seconds", parsers.seconds(0)),
    "SMTP_RETRIES": ("smtp_retries", parsers.integer(0, 10)),
    "SMTP_IDLE_SECONDS": ("smtp_idle_seconds", parsers.seconds(0)),
    "SMTP_MAX_MESSAGES_PER_CONNECTION": ("smtp_max_messages_per_connection", parsers.integer(1, 10000)),
    "SMTP_CIRCUIT_THRESHOLD": ("smtp_circuit_threshold", parsers.integer(1, 1000)),
    "SMTP_CIRCUIT_COOLDOWN_SECONDS": ("smtp_circuit_cooldown_seconds", parsers.seconds(0)),
    "SMTP_OAUTH_TOKEN_URL": ("smtp_oauth_token_url", oauth.token_url),
    "SMTP_OAUTH_CLIENT_ID": ("smtp_oauth_client_id", oauth.credential),
    "SMTP_OAUTH_CLIENT_SECRET": ("smtp_oauth_client_secret", oauth.credential),
    "SMTP_OAUTH_SCOPE": ("smtp_oauth_scope", oauth.scope),
    "SMTP_OAUTH_REFRESH_TOKEN": ("smtp_oauth_refresh_token", oauth.credential),
    "SMTP_OAUTH_PROVIDER": ("smtp_oauth_provider", parsers.choice(*oauth.PRESETS)),
    "SMTP_OAUTH_TENANT": ("smtp_oauth_tenant", oauth.tenant),
    "SMTP_AUTH_MECHANISM": ("smtp_auth_mechanism", parsers.member(oauth.AuthMechanism)),
    "SMTP_FALLBACK_URLS": ("smtp_fallbacks", relay_urls),
    "REDIS_URL": ("redis_url", parsers.redis_url),
    "REDIS_KEY_PREFIX": ("redis_key_prefix", parsers.text),
    "REDIS_TLS_CA_FILE": ("redis_tls_ca_file", parsers.text),
    "REDIS_TLS_VERIFY": ("redis_tls_verify", parsers.boolean),
    "IDEMPOTENCY_SECRET": ("idempotency_secret", lambda raw: raw),
    "IDEMPOTENCY_TTL_SECONDS": ("idempotency_ttl_seconds", parsers.integer(1, parsers.MAX_TTL_SECONDS)),
    "IDEMPOTENCY_WAIT_SECONDS": ("idempotency_wait_seconds", parsers.seconds(0)),
    "IDEMPOTENCY_FAILURE_MODE": ("idempotency_failure_mode", parsers.member(FailureMode)),
    "MESSAGE_STATUS_TTL_SECONDS": ("message_status_ttl_seconds", parsers.integer(60, 30 * 24 * 3600)),
    "SUPPRESSION_TTL_SECONDS": ("suppression_ttl_seconds", parsers.integer(0, 365 * 24 * 3600)),
    "DKIM_PRIVATE_KEY_FILE": ("dkim_private_key_file", parsers.text),
    "DKIM_SELECTOR": ("dkim_selector", dkim.selector),
    "DKIM_DOMAIN": ("dkim_domain", parsers.domain),
    "DNS_RESOLVER": ("dns_resolver", parsers.resolver),
    "BOUNCE_IMAP_URL": ("bounce_imap_url", parsers.bounce_imap_url),
    "BOUNCE_IMAP_TLS_CA_FILE": ("bounce_imap_tls_ca_file", parsers.text),
    "BOUNCE_IMAP_TLS_VERIFY": ("bounce_imap_tls_verify", parsers.boolean),
    "BOUNCE_POLL_SECONDS": ("bounce_poll_seconds", parsers.seconds(0)),
    "BOUNCE_READER_PORT": ("bounce_reader_port", parsers.port_number),
    "MAX_REQUEST_BYTES": ("max_request_bytes", parsers.integer(1024, 10 * 1024 * 1024)),  # one-time codes, not files
    "RATE_LIMIT_PER_RECIPIENT": ("rate_limit_per_recipient", parsers.rate),
    "RATE_LIMIT_GLOBAL": ("rate_limit_global", parsers.rate),
    "ALLOWED_RECIPIENT_DOMAINS": ("allowed_recipient_domains", parsers.domains),
    "LOG_LEVEL": ("log_level", parsers.log_level),
    "LOG_FORMAT": ("log_format", parsers.choice("json", "text")),
    "WEB_CONCURRENCY": ("web_concurrency", parsers.integer(1, 256)),
    "WEB_THREADS": ("web_threads", parsers.integer(1, 256)),
    "PROMETHEUS_MULTIPROC_DIR": ("metrics_dir", parsers.text),
    # The traces endpoint wins over the general one, as in the SDK: it comes later and overwrites.
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("otel_endpoint", parsers.text),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("otel_endpoint", parsers.text),
    "OTEL_SDK_DISABLED": ("otel_sdk_disabled", parsers.boolean),
    "OTEL_SERVICE_NAME": ("otel_service_name", parsers.text),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("otel_protocol", parsers.otlp_protocol),
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
    values: dict[str, Any] = {}
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
            values["host"], values["port"] = parsers.listen(raw_port)
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
    _check_ca_file("SMTP_TLS_CA_FILE", settings.smtp_tls_ca_file)
    _check_ca_file("BOUNCE_IMAP_TLS_CA_FILE", settings.bounce_imap_tls_ca_file)
    if settings.smtp_password and not settings.smtp_user:
        raise ConfigError("SMTP_USER: expected a user name when SMTP_PASSWORD is set")
    _check_oauth(settings)
    _check_dkim(settings)
    _check_ttl(settings)
    _check_redis_tls(settings)
    _check_tracing(settings)


def _check_oauth(settings: Settings) -> None:
    try:
        client = settings.smtp_oauth
    except ValueError as exc:
        raise ConfigError(str(exc)) from None  # oauth_client names the variable, never a secret's value
    mechanism = settings.smtp_auth_mechanism
    if client is None:
        if mechanism in oauth.OAUTH_MECHANISMS:
            raise ConfigError(f"SMTP_AUTH_MECHANISM: expected plain, login or auto without OAuth ({mechanism} needs "
                              "SMTP_OAUTH_TOKEN_URL or SMTP_OAUTH_PROVIDER)")
        return
    if settings.smtp_password:
        raise ConfigError("SMTP_PASSWORD, SMTP_OAUTH_TOKEN_URL: expected one of them: OAuth replaces the password "
                          "(unset SMTP_PASSWORD, or the SMTP_OAUTH_* variables)")
    if not settings.smtp_user:
        raise ConfigError("SMTP_USER: expected the mailbox the OAuth token acts for (the user= of XOAUTH2)")
    if mechanism in oauth.PASSWORD_MECHANISMS:
        raise ConfigError(f"SMTP_AUTH_MECHANISM: expected xoauth2, oauthbearer or auto with OAuth ({mechanism} "
                          "sends a password)")


def _check_dkim(settings: Settings) -> None:
    if not settings.dkim_private_key_file:
        if settings.dkim_selector or settings.dkim_domain:
            raise ConfigError("DKIM_PRIVATE_KEY_FILE: expected the key to sign with when DKIM_SELECTOR or DKIM_DOMAIN "
                              "is set (or unset them: the relay then signs, if it does)")
        return
    if not settings.dkim_selector:
        raise ConfigError("DKIM_SELECTOR: expected the selector the key is published under "
                          "(<selector>._domainkey.<domain>) when DKIM_PRIVATE_KEY_FILE is set")
    try:
        _ = settings.dkim  # read and checked now, once: a bad key stops startup, not the first send
    except ValueError as exc:
        raise ConfigError(f"DKIM_PRIVATE_KEY_FILE: expected {exc}") from None


def _check_ttl(settings: Settings) -> None:
    # A shorter TTL would let a committing record expire while its mail may still be on the wire, and a
    # duplicate would then send it again (timing.py says what each margin covers).
    least = minimum_ttl_seconds(settings.smtp_timeout_seconds, settings.idempotency_wait_seconds)
    if settings.idempotency_ttl_seconds < least:
        raise ConfigError(
            f"IDEMPOTENCY_TTL_SECONDS: expected at least {least} (the reservation hold, SMTP_TIMEOUT_SECONDS + "
            f"{reservation_hold_seconds(0):g} s, "
            "plus IDEMPOTENCY_WAIT_SECONDS): a shorter TTL lets a key expire while its mail may still be sending, "
            "and a duplicate would send it again")


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
    _check_ca_file("REDIS_TLS_CA_FILE", settings.redis_tls_ca_file)


def _check_ca_file(variable: str, path: str) -> None:
    if path:
        try:
            parsers.check_ca_file(path)
        except ValueError as exc:
            raise ConfigError(f"{variable}: expected {exc}") from None


def load_settings_or_exit() -> Settings:
    """For entry points: a bad value ends the process with one line on stderr."""
    try:
        return load_settings()
    except ConfigError as exc:
        raise SystemExit(f"herald-smtp: configuration error: {exc}") from None

