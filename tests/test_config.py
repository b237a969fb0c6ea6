"""Configuration: defaults, accepted forms, one-line errors, .env, redaction, and startup exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from herald_smtp.config import ConfigError, load_settings, settings_from

HERALD_SMTP = Path(sys.executable).parent / "herald-smtp"


def config_error(env: dict[str, str]) -> str:
    """The message of the ConfigError that `env` raises (fails the test if none is raised)."""
    with pytest.raises(ConfigError) as info:
        settings_from(env)
    return str(info.value)


# --- defaults


def test_defaults():
    s = settings_from({})
    assert (s.host, s.port, s.bind) == ("0.0.0.0", 8084, "0.0.0.0:8084")
    assert s.api_keys == ()
    assert s.smtp_port == 587
    assert s.smtp_use_starttls is True
    assert s.smtp_use_tls is False
    assert s.smtp_tls_verify is True
    assert s.smtp_tls_ca_file == ""
    assert s.smtp_timeout_seconds == 10
    assert s.smtp_retries == 2
    assert s.smtp_idle_seconds == 30
    assert s.smtp_max_messages_per_connection == 100
    assert (s.smtp_circuit_threshold, s.smtp_circuit_cooldown_seconds) == (5, 30)
    assert s.redis_url == ""
    assert s.redis_key_prefix == "herald-smtp:"
    assert s.idempotency_ttl_seconds == 300
    assert s.idempotency_wait_seconds == 10
    assert s.idempotency_failure_mode == "open"
    assert s.max_request_bytes == 65536
    assert s.log_level == "INFO"
    assert s.log_format == "json"
    assert (s.rate_limit_per_recipient, s.rate_limit_global, s.allowed_recipient_domains) == (None, None, ())


@pytest.mark.parametrize(
    "env, configured",
    [
        ({}, False),
        ({"SMTP_HOST": "smtp.example.com"}, False),
        ({"SMTP_FROM": "noreply@example.com"}, False),
        ({"SMTP_HOST": "smtp.example.com", "SMTP_FROM": "noreply@example.com"}, True),
    ],
)
def test_smtp_configured_needs_host_and_from(env, configured):
    assert settings_from(env).smtp_configured is configured


# --- accepted forms


@pytest.mark.parametrize(
    "raw, host, port",
    [
        (":8084", "0.0.0.0", 8084),
        ("8084", "0.0.0.0", 8084),
        (":9001", "0.0.0.0", 9001),
        ("127.0.0.1:9000", "127.0.0.1", 9000),
    ],
)
def test_port_forms(raw, host, port):
    s = settings_from({"PORT": raw})
    assert (s.host, s.port) == (host, port)
    assert s.bind == f"{host}:{port}"


@pytest.mark.parametrize(
    "raw, address, bind",
    [
        (":8084", ("0.0.0.0", 8084), "0.0.0.0:8084"),
        ("8084", ("0.0.0.0", 8084), "0.0.0.0:8084"),
        ("127.0.0.1:9000", ("127.0.0.1", 9000), "127.0.0.1:9000"),
        ("localhost:9000", ("localhost", 9000), "localhost:9000"),
        ("herald-smtp.internal:9000", ("herald-smtp.internal", 9000), "herald-smtp.internal:9000"),
        ("[::1]:8084", ("::1", 8084), "[::1]:8084"),
        ("[::]:8084", ("::", 8084), "[::]:8084"),
        ("[2001:db8::5]:80", ("2001:db8::5", 80), "[2001:db8::5]:80"),
    ],
)
def test_every_accepted_port_form_is_a_bind_gunicorn_accepts(raw, address, bind):
    import gunicorn.config

    from herald_smtp.tools.serve import gunicorn_options

    settings = settings_from({"PORT": raw})
    assert settings.bind == bind
    config = gunicorn.config.Config()
    config.set("bind", gunicorn_options(settings)["bind"])
    assert config.address == [address]  # gunicorn's own parser; raises on a bind it cannot use


@pytest.mark.parametrize("host", ["smtp.example.com", "SMTP.Example.COM", "localhost", "mailpit", "mail_relay",
                                  "smtp-1.eu.example.com", "a" * 63 + ".example.com", "127.0.0.1", "192.0.2.25",
                                  "::1", "2001:db8::25", " smtp.example.com "])
def test_smtp_host_accepts_names_and_addresses(host):
    assert settings_from({"SMTP_HOST": host}).smtp_host == host.strip()


def test_the_largest_accepted_numbers_give_gunicorn_options_it_accepts():
    import gunicorn.config

    from herald_smtp.tools.serve import gunicorn_options

    settings = settings_from({
        "SMTP_TIMEOUT_SECONDS": "3600", "IDEMPOTENCY_WAIT_SECONDS": "3600", "SMTP_IDLE_SECONDS": "3600",
        "SMTP_CIRCUIT_COOLDOWN_SECONDS": "3600", "IDEMPOTENCY_TTL_SECONDS": "604800", "SMTP_RETRIES": "10",
        "SMTP_MAX_MESSAGES_PER_CONNECTION": "10000", "SMTP_CIRCUIT_THRESHOLD": "1000", "WEB_CONCURRENCY": "256",
        "WEB_THREADS": "256", "MAX_REQUEST_BYTES": "10485760", "REDIS_URL": "redis://localhost:6379/0",
    })
    options = gunicorn_options(settings)
    config = gunicorn.config.Config()
    for name in ("timeout", "graceful_timeout", "workers", "threads"):
        config.set(name, options[name])
    assert (config.timeout, config.graceful_timeout) == (options["timeout"], options["graceful_timeout"])
    assert config.graceful_timeout > 3600  # finite, and still longer than one send may take
    assert (config.workers, config.threads) == (256, 256)


@pytest.mark.parametrize(
    "raw, keys",
    [
        ("a, b,,c", ("a", "b", "c")),
        ("only-one", ("only-one",)),
        (" , ,", ()),
    ],
)
def test_api_key_list(raw, keys):
    assert settings_from({"API_KEY": raw}).api_keys == keys


@pytest.mark.parametrize(
    "raw, level",
    [
        ("trace", "DEBUG"),
        ("debug", "DEBUG"),
        ("info", "INFO"),
        ("warn", "WARNING"),
        ("warning", "WARNING"),
        ("error", "ERROR"),
        ("ERROR", "ERROR"),
    ],
)
def test_log_level_maps_to_logging_names(raw, level):
    assert settings_from({"LOG_LEVEL": raw}).log_level == level


@pytest.mark.parametrize(
    "raw, value",
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("TRUE", True),
        ("No", False),
    ],
)
def test_boolean_forms(raw, value):
    assert settings_from({"SMTP_TLS_VERIFY": raw}).smtp_tls_verify is value
    # SMTP_USE_TLS is only allowed on with STARTTLS off.
    assert settings_from({"SMTP_USE_TLS": raw, "SMTP_USE_STARTTLS": "false"}).smtp_use_tls is value


@pytest.mark.parametrize(
    "raw, amount, seconds",
    [("5/60s", 5, 60), ("5/minute", 5, 60), ("5/2 minutes", 5, 120), ("10/hour", 10, 3600), ("1/s", 1, 1),
     (" 5 / 60S ", 5, 60), ("1000/day", 1000, 86400), ("100000/1second", 100000, 1), ("3/86400s", 3, 86400)],
)
def test_rate_limit_forms(raw, amount, seconds):
    for variable, field in [("RATE_LIMIT_PER_RECIPIENT", "rate_limit_per_recipient"),
                            ("RATE_LIMIT_GLOBAL", "rate_limit_global")]:
        rate = getattr(settings_from({variable: raw}), field)
        assert (rate.amount, rate.seconds) == (amount, seconds)
        assert settings_from({variable: raw}).redacted()[field] == f"{amount}/{seconds}s"


def test_allowed_recipient_domains_are_lower_cased_and_deduplicated():
    s = settings_from({"ALLOWED_RECIPIENT_DOMAINS": " Example.COM , example.org,example.com, mail.example.test"})
    assert s.allowed_recipient_domains == ("example.com", "example.org", "mail.example.test")
    assert settings_from({}).redacted()["rate_limit_global"] == "off"


def test_implicit_tls_with_starttls_off_is_accepted():
    s = settings_from({"SMTP_USE_TLS": "true", "SMTP_USE_STARTTLS": "false", "SMTP_PORT": "465"})
    assert (s.smtp_use_tls, s.smtp_use_starttls, s.smtp_port) == (True, False, 465)


def test_a_real_ca_bundle_is_accepted_and_a_broken_one_refused(tmp_path):
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    assert settings_from({"SMTP_TLS_CA_FILE": str(ca)}).smtp_tls_ca_file == str(ca)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    with pytest.raises(ConfigError, match="^SMTP_TLS_CA_FILE: expected .*PEM"):
        settings_from({"SMTP_TLS_CA_FILE": str(broken)})


# --- invalid values: one line, starting with the variable, saying the expected form

INVALID = [
    # (variable, value, a word of the expected form)
    ("SMTP_PORT", "abc", "port number 1-65535"),
    ("SMTP_PORT", "70000", "65535"),
    ("SMTP_PORT", "0", "port number 1-65535"),
    ("SMTP_PORT", "65536", "port number 1-65535"),
    ("IDEMPOTENCY_TTL_SECONDS", "-5", "integer"),
    ("SMTP_TIMEOUT_SECONDS", "0", "seconds"),
    ("SMTP_USE_TLS", "maybe", "true or false"),
    ("IDEMPOTENCY_FAILURE_MODE", "sometimes", "open or closed"),
    ("LOG_LEVEL", "loud", "debug"),
    ("LOG_FORMAT", "xml", "json or text"),
    ("REDIS_URL", "http://x", "redis://"),
    ("PORT", "abc", ":8084"),
    ("SMTP_FROM", "not-an-address", "email address"),
    ("WEB_CONCURRENCY", "0", "integer >= 1"),
    ("SMTP_TLS_CA_FILE", "/nonexistent.pem", "PEM"),
    ("SMTP_FROM", "jörg@example.com", "ASCII"),
    ("SMTP_USER", "jörg", "ASCII"),
    # numbers: every one bounded, the bound named (400 digits used to parse to inf and overflow in gunicorn)
    ("SMTP_TIMEOUT_SECONDS", "9" * 400, "<= 3600"),
    ("SMTP_TIMEOUT_SECONDS", "3600.5", "<= 3600"),
    ("SMTP_IDLE_SECONDS", "3601", "<= 3600"),
    ("SMTP_CIRCUIT_COOLDOWN_SECONDS", "3601", "<= 3600"),
    ("IDEMPOTENCY_WAIT_SECONDS", "3601", "<= 3600"),
    ("IDEMPOTENCY_TTL_SECONDS", "604801", "<= 604800"),
    ("IDEMPOTENCY_TTL_SECONDS", "9" * 5000, "<= 604800"),  # beyond int()'s 4300-digit limit
    ("SMTP_RETRIES", "11", "<= 10"),
    ("SMTP_MAX_MESSAGES_PER_CONNECTION", "10001", "<= 10000"),
    ("SMTP_CIRCUIT_THRESHOLD", "1001", "<= 1000"),
    ("WEB_CONCURRENCY", "257", "<= 256"),
    ("WEB_THREADS", "257", "<= 256"),
    ("MAX_REQUEST_BYTES", "10485761", "<= 10485760"),
    # PORT: forms gunicorn would refuse at bind time
    ("PORT", "::8084", "[::1]:8084"),
    ("PORT", "::1", "[::1]:8084"),
    ("PORT", "::1:8084", "[::1]:8084"),
    ("PORT", "http://0.0.0.0:8084", "[::1]:8084"),
    ("PORT", "[::1]", "[::1]:8084"),
    ("PORT", "[::1]8084", "[::1]:8084"),
    ("PORT", "[localhost]:8084", "[::1]:8084"),
    ("PORT", "[::1]:70000", "[::1]:8084"),
    ("PORT", "0", "[::1]:8084"),
    ("PORT", ":0", "[::1]:8084"),
    ("PORT", "127.0.0.1:0", "[::1]:8084"),
    ("PORT", "[::1]:0", "[::1]:8084"),
    ("PORT", ":65536", "[::1]:8084"),
    ("SMTP_FALLBACK_URLS", "smtp://relay.example:0", "entry 1 (counting from 1) to be smtp://"),
    ("SMTP_FALLBACK_URLS", "smtps://relay.example:0", "(a port number 1-65535)"),
    ("SMTP_FALLBACK_URLS", "smtp+plain://relay.example:65536", "entry 1"),
    ("PORT", "a..b:8084", "[::1]:8084"),
    ("PORT", "unix:/tmp/x.sock", "[::1]:8084"),
    # SMTP_HOST: typos that would only show as a DNS failure on the first send
    ("SMTP_HOST", "smtp..example.com", "a host name, an IPv4 address or an IPv6 address"),
    ("SMTP_HOST", "a" * 64 + ".example.com", "63"),
    ("SMTP_HOST", "smtp example.com", "host name"),
    ("SMTP_HOST", "smtp.example.com:587", "host name"),
    ("SMTP_HOST", "-smtp.example.com", "host name"),
    ("SMTP_HOST", "smtp.example.com.", "host name"),
    ("SMTP_HOST", "192.0.2.256", "host name"),
    ("SMTP_HOST", "[2001:db8::1]", "without brackets"),
    ("SMTP_HOST", "smtp.bücher.de", "ASCII"),
    ("SMTP_HOST", ("a" * 60 + ".") * 5 + "com", "253"),
    # SMTP_FROM_NAME: a header value; a long one-word name cannot fold
    ("SMTP_FROM_NAME", "N" * 201, "at most 200 characters"),
    ("SMTP_FROM_NAME", "Herald\nBcc: x@evil.example", "control character"),
    ("SMTP_FROM_NAME", "=?utf-8?q?Herald=0D=0ABcc:_x@evil.example?=", "encoded-word"),
    ("SMTP_FROM", "=?utf-8?q?a=0D=0Ab?=@example.com", "encoded-word"),
    # abuse limits: "N/Ms" or limits' "N/[M] unit", a count 1-100000, a window of 1 s to a day
    ("RATE_LIMIT_PER_RECIPIENT", "5 per minute", "a rate like 5/60s or 5/minute"),
    ("RATE_LIMIT_PER_RECIPIENT", "0/60s", "1-100000 sends"),
    ("RATE_LIMIT_PER_RECIPIENT", "5/0s", "1 s to 1 day"),
    ("RATE_LIMIT_PER_RECIPIENT", "5/60", "5/60s"),
    ("RATE_LIMIT_PER_RECIPIENT", "5/1h", "hour"),
    ("RATE_LIMIT_GLOBAL", "-1/s", "a rate like 5/60s"),
    ("RATE_LIMIT_GLOBAL", "abc", "a rate like 5/60s"),
    ("RATE_LIMIT_GLOBAL", "100001/minute", "1-100000 sends"),
    ("RATE_LIMIT_GLOBAL", "5/month", "1 s to 1 day"),
    ("RATE_LIMIT_GLOBAL", "1/second;5/minute", "a rate like 5/60s"),
    ("RATE_LIMIT_GLOBAL", "9" * 400 + "/s", "1-100000 sends"),
    ("ALLOWED_RECIPIENT_DOMAINS", "example..com", "domain names like example.com,example.org ('example..com'"),
    ("ALLOWED_RECIPIENT_DOMAINS", "example.com,@example.org", "'@example.org'"),
    ("ALLOWED_RECIPIENT_DOMAINS", "example.com,", "''"),
    ("ALLOWED_RECIPIENT_DOMAINS", "localhost", "'localhost'"),
    ("ALLOWED_RECIPIENT_DOMAINS", "corp.local", "'corp.local'"),
    ("ALLOWED_RECIPIENT_DOMAINS", "192.0.2.1", "'192.0.2.1'"),
    ("ALLOWED_RECIPIENT_DOMAINS", "exa mple.com", "'exa mple.com'"),
    ("ALLOWED_RECIPIENT_DOMAINS", "example.com\nBcc.example.org", "domain names"),
]


@pytest.mark.parametrize("variable, value, form", INVALID, ids=[f"{v}={x[:40]}" for v, x, _ in INVALID])
def test_invalid_value_is_one_line_naming_variable_and_form(variable, value, form):
    message = config_error({variable: value})
    assert "\n" not in message
    assert message.startswith(f"{variable}: expected ")
    assert form in message


FROM_NAMES_AT_THE_BOUND = ["N" * 200, '"' * 200, "\\" * 200, "é" * 200, "Herald, Inc. " * 15 + "Heral"]


@pytest.mark.parametrize("name", FROM_NAMES_AT_THE_BOUND, ids=["word", "quotes", "backslashes", "non-ascii", "comma"])
def test_the_longest_accepted_from_name_keeps_every_line_within_998(name):
    from herald_smtp.addresses import MAX_DISPLAY_NAME, parse_address
    from herald_smtp.sending.message import MailWriter
    from herald_smtp.sending.request import SendRequest

    domain = ("d" * 62 + ".") * 2 + "d" * 59 + ".com"
    sender = "s" * 64 + "@" + domain  # 254 characters: the longest address email-validator allows
    recipient = "r" * 64 + "@" + domain
    assert len(name) == MAX_DISPLAY_NAME
    settings = settings_from({"SMTP_FROM": sender, "SMTP_FROM_NAME": name})
    assert settings.smtp_from_name == name
    request = SendRequest(to=parse_address(recipient), subject="x" * 5000, body="y" * 5000)
    raw = MailWriter(settings).build(request, "id@example.com").payload
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998  # RFC 5322 2.1.1


def test_a_long_from_name_is_refused_at_startup_naming_the_bound():
    # 2,000 characters used to give a 2,001-character From line; an SMTP server may refuse the whole mail for it.
    message = config_error({"SMTP_FROM_NAME": "N" * 2000})
    assert message == "SMTP_FROM_NAME: expected a display name of at most 200 characters"


def test_both_tls_modes_on_names_both():
    message = config_error({"SMTP_USE_TLS": "true", "SMTP_USE_STARTTLS": "true"})
    assert "\n" not in message
    assert "SMTP_USE_TLS" in message and "SMTP_USE_STARTTLS" in message
    assert "expected" in message


def test_password_without_user_names_user():
    message = config_error({"SMTP_PASSWORD": "pw-without-user"})
    assert "\n" not in message
    assert message.startswith("SMTP_USER: expected ")
    assert "pw-without-user" not in message


SECRET_LEAKS = [
    ({"SMTP_USER": "u", "SMTP_PASSWORD": "hunter2-secret", "SMTP_PORT": "abc"}, "hunter2-secret"),
    ({"SMTP_PASSWORD": "hunter2-secret"}, "hunter2-secret"),
    ({"API_KEY": "key-secret-123", "SMTP_PORT": "abc"}, "key-secret-123"),
    ({"REDIS_URL": "http://:redis-secret@x:6379"}, "redis-secret"),
]


@pytest.mark.parametrize("env, secret", SECRET_LEAKS, ids=["bad-port", "no-user", "api-key", "redis-url"])
def test_secret_never_in_error_message(env, secret):
    assert secret not in config_error(env)


# --- .env


def write_dotenv(tmp_path: Path, text: str) -> str:
    path = tmp_path / ".env"
    path.write_text(text)
    return str(path)


def test_dotenv_is_loaded(tmp_path):
    dotenv = write_dotenv(
        tmp_path, "SMTP_HOST=smtp.example.com\nSMTP_FROM=noreply@example.com\nSMTP_PORT=2525\n"
    )
    s = load_settings(environ={}, dotenv_path=dotenv)
    assert (s.smtp_host, s.smtp_from, s.smtp_port) == ("smtp.example.com", "noreply@example.com", 2525)
    assert s.smtp_configured


def test_environment_wins_over_dotenv(tmp_path):
    dotenv = write_dotenv(tmp_path, "SMTP_PORT=2525\nLOG_FORMAT=text\n")
    s = load_settings(environ={"SMTP_PORT": "465"}, dotenv_path=dotenv)
    assert s.smtp_port == 465
    assert s.log_format == "text"  # not overridden: still from .env


def test_empty_values_mean_the_default(tmp_path):
    dotenv = write_dotenv(tmp_path, "SMTP_PORT=\nLOG_LEVEL=\n")
    s = load_settings(environ={"IDEMPOTENCY_TTL_SECONDS": "", "PORT": "  "}, dotenv_path=dotenv)
    assert s.smtp_port == 587
    assert s.log_level == "INFO"
    assert s.idempotency_ttl_seconds == 300
    assert s.port == 8084


def test_invalid_value_in_dotenv_is_reported(tmp_path):
    dotenv = write_dotenv(tmp_path, "SMTP_PORT=abc\n")
    with pytest.raises(ConfigError, match=r"^SMTP_PORT: expected "):
        load_settings(environ={}, dotenv_path=dotenv)


def test_missing_dotenv_gives_defaults(tmp_path):
    s = load_settings(environ={}, dotenv_path=str(tmp_path / "no-such.env"))
    assert s.smtp_port == 587 and s.port == 8084


# --- redaction and workers


def test_redacted_shows_secrets_only_as_set_or_unset():
    s = settings_from(
        {
            "API_KEY": "key-one,key-two",
            "SMTP_USER": "mailer",
            "SMTP_PASSWORD": "hunter2-secret",
            "REDIS_URL": "redis://:pw@host:6379/0",
        }
    )
    out = s.redacted()
    assert out["api_keys"] == "set"
    assert out["smtp_password"] == "set"
    assert "pw" not in out["redis_url"]
    assert out["redis_url"].startswith("redis://") and "host:6379/0" in out["redis_url"]
    text = repr(out)
    for secret in ("key-one", "key-two", "hunter2-secret", ":pw@"):
        assert secret not in text
    assert out["smtp_user"] == "mailer"  # not a secret


def test_redacted_unset_secrets():
    out = settings_from({}).redacted()
    assert out["api_keys"] == "unset"
    assert out["smtp_password"] == "unset"
    assert out["redis_url"] == ""


@pytest.mark.parametrize(
    "env, workers",
    [
        ({"WEB_CONCURRENCY": "4"}, 1),
        ({"WEB_CONCURRENCY": "4", "REDIS_URL": "redis://localhost:6379/0"}, 4),
    ],
)
def test_workers(env, workers):
    s = settings_from(env)
    assert s.workers() == workers
    assert s.redacted()["workers"] == workers


# --- the process: a bad value stops `herald-smtp serve` with one line on stderr


@pytest.mark.parametrize(
    "extra, names",
    [
        ({"SMTP_PORT": "abc"}, ["SMTP_PORT"]),
        ({"SMTP_USE_TLS": "true", "SMTP_USE_STARTTLS": "true"}, ["SMTP_USE_TLS", "SMTP_USE_STARTTLS"]),
        ({"REDIS_URL": "memcached://127.0.0.1:11211"}, ["REDIS_URL"]),
        ({"RATE_LIMIT_PER_RECIPIENT": "5 per minute"}, ["RATE_LIMIT_PER_RECIPIENT"]),
        ({"ALLOWED_RECIPIENT_DOMAINS": "example..com"}, ["ALLOWED_RECIPIENT_DOMAINS"]),
        ({"SMTP_FALLBACK_URLS": "smtp://a.example,smtp://u:hunter2-secret@b.example:99999"},
         ["SMTP_FALLBACK_URLS", "entry 2"]),
    ],
    ids=["bad-port", "both-tls", "unknown-store-scheme", "bad-rate", "bad-domain", "bad-fallback-url"],
)
def test_serve_exits_with_one_line_on_bad_config(tmp_path, extra, names):
    env = {**os.environ, **extra, "SMTP_USER": "u", "SMTP_PASSWORD": "hunter2-secret"}
    result = subprocess.run(
        [str(HERALD_SMTP), "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    for name in names:
        assert name in lines[0]
    assert "expected" in lines[0]
    assert "hunter2-secret" not in result.stderr


def test_implicit_tls_alone_turns_the_starttls_default_off():
    settings = settings_from({"SMTP_USE_TLS": "true", "SMTP_PORT": "465"})
    assert settings.smtp_use_tls is True and settings.smtp_use_starttls is False


def test_redis_password_in_the_query_is_masked_too():
    shown = settings_from({"REDIS_URL": "redis://h:6379/0?password=q-secret"}).redacted()["redis_url"]
    assert "q-secret" not in shown and shown.startswith("redis://h:6379/0")


@pytest.mark.parametrize("name, value", [("SMTP_RETRIES", "١٢"), ("SMTP_TIMEOUT_SECONDS", "1_0"),
                                         ("SMTP_TIMEOUT_SECONDS", "inf"), ("PORT", "1.2.3.4 :80")])
def test_odd_number_forms_are_rejected(name, value):
    with pytest.raises(ConfigError, match=f"^{name}: expected"):
        settings_from({name: value})


def test_non_ascii_password_is_refused_without_showing_it():
    with pytest.raises(ConfigError, match="^SMTP_PASSWORD: expected ASCII") as info:
        settings_from({"SMTP_USER": "u", "SMTP_PASSWORD": "pässwort-geheim"})
    assert "geheim" not in str(info.value)


def test_the_metrics_directory_comes_from_the_environment_only(tmp_path):
    # prometheus_client honours only the process environment; a .env value would point /metrics elsewhere.
    dotenv = tmp_path / ".env"
    dotenv.write_text("PROMETHEUS_MULTIPROC_DIR=/from/dotenv\nSMTP_PORT=2525\n")
    assert load_settings({}, str(dotenv)).metrics_dir == ""
    assert load_settings({"PROMETHEUS_MULTIPROC_DIR": "/from/env"}, str(dotenv)).metrics_dir == "/from/env"


# --- enumerated settings: members, still equal to the strings other code and the logs use


def test_tls_mode_and_failure_mode_are_enums_that_read_as_their_strings():
    import json

    from herald_smtp.config import IMPLICIT_TLS, PLAIN, STARTTLS, FailureMode, TlsMode

    assert (STARTTLS, IMPLICIT_TLS, PLAIN) == (TlsMode.STARTTLS, TlsMode.IMPLICIT, TlsMode.PLAIN)
    settings = settings_from({"SMTP_HOST": "primary.example", "SMTP_USE_TLS": "true",
                              "IDEMPOTENCY_FAILURE_MODE": "Closed",
                              "SMTP_FALLBACK_URLS": "smtp://b.example,smtp+plain://c.example"})
    assert [relay.tls for relay in settings.relays] == [TlsMode.IMPLICIT, TlsMode.STARTTLS, TlsMode.PLAIN]
    assert settings.idempotency_failure_mode is FailureMode.CLOSED
    assert settings.idempotency_failure_mode == "closed"  # sending/claim.py compares with the string
    assert settings_from({}).idempotency_failure_mode is FailureMode.OPEN
    shown = settings.redacted()
    assert f"{shown['idempotency_failure_mode']}" == "closed" and str(TlsMode.PLAIN) == "plain"
    assert json.loads(json.dumps(shown))["relays"][0]["tls"] == "implicit"
