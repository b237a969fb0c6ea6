"""Secrets in the configuration: never in a ConfigError, never in repr(settings), never on the startup line.

A URL variable (REDIS_URL, SMTP_FALLBACK_URLS) may hold a password that the operator forgot to
percent-encode: a `?`, `&`, `#` or `/` in it moves part of the password into the query, the fragment or the
path. Whatever part a parser then complains about, its message names the variable and the expected form, never
text from the value. Every secret-looking string below is written from "s3cr" and "et" (or "def", "secret"),
and none of those may show in the message.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from herald_smtp.config import ConfigError, Settings, settings_from

# Password text the message must not carry (checked case-insensitively). None of these is a word of any expected
# form ("default" would contain "def": the forms must not use it).
LEAKS = ("s3cr", "et@", "def", "secret", "top", "℀", "a/c")


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from(env)
    return str(info.value)


# Each takes a different error path of the REDIS_URL grammar.
REDIS_URLS = [
    "redis://:s3cr?et@redis.internal:6379/0",                     # `?` in the password: unknown parameter 'et@...'
    "redis://h:6379/0?password=abc&def",                           # `&` in a query password: unknown parameter 'def'
    "redis+sentinel://h:26379/mymaster?sentinel_password=top&secret",
    "unix:///run/redis.sock?password=s3cr&et=1",
    "redis+cluster://:pw@n1:7000?s3cret=1",
    "redis://:s3cr℀et@redis.internal:6379/0",                      # urllib's NFKC check quotes the whole netloc
    "redis+sentinel://:pw@s1:26379,s3cr℀et:1/mymaster",           # the same, in one node of the host list
    "redis+cluster://:pw@n1:7000,s3cr℀et:1",
    "redis://:s3cr#et@redis.internal:6379/0",                      # `#`: the rest is a fragment
    "redis://:s3cr/et@redis.internal:6379/0",                      # `/`: the rest is the path (the db)
    "redis+sentinel://:pw@s1:26379/s3cr/et",                       # a service name with a slash
    "redis://h:6379/0?db=s3cret",
    "redis://h:s3cret/0",
    "redis+sentinel://h:26379/m?db=s3cret",
    "redis+cluster://:s3cr/et@n1:7000",
]


@pytest.mark.parametrize("url", REDIS_URLS)
def test_no_redis_url_error_carries_password_text(url):
    message = config_error({"REDIS_URL": url})
    assert message.startswith("REDIS_URL: expected ")
    for leak in LEAKS:
        assert leak not in message.lower(), (leak, message)


# Each takes a different error path of the SMTP_FALLBACK_URLS grammar (the password digits-only where it must get
# past the port, so that the rest reaches the query parser).
RELAY_URLS = [
    "smtp://u:s3cr?et@relay.example",
    "smtp://u:12?from=s3cr\"et@relay.example",                    # email-validator quotes the characters it refuses
    "smtp://u:12?from=s3cret",
    "smtp://u:12?from_name=s3cr%0Aet",
    "smtp://u:12?tls_verify=s3cret",
    "smtp://u:12?ca_file=/s3cr/et.pem",
    "smtp://u:12?s3cret=1",
    "smtp://u:12?from=a@b.example&from=s3cr",
    "smtp://u:s3cr℀et@relay.example",
    "smtp://u:s3cr#et@relay.example",
    "smtp://u:s3cr/et@relay.example",
    "smtp://u:pässs3cret@relay.example",
    "smtp://:s3cret@relay.example",
    "smtp+plain://u:s3cret@relay.example",
    "smtp://u:s3cret@relay.example:99999",
    "smtp://u:s3cret@relay.example:0",
    "ftp://u:s3cret@relay.example",
    "smtp://u:s3cret@relay..example",
]


@pytest.mark.parametrize("url", RELAY_URLS)
def test_no_fallback_url_error_carries_password_text(url):
    message = config_error({"SMTP_FALLBACK_URLS": f"smtp://first.example,{url}"})
    assert message.startswith("SMTP_FALLBACK_URLS: expected entry 2 ")
    for leak in LEAKS:
        assert leak not in message.lower(), (leak, message)


def test_an_unknown_redis_parameter_names_the_accepted_ones():
    message = config_error({"REDIS_URL": "redis://h:6379/0?socket_timeout=5"})
    assert message == ("REDIS_URL: expected redis://[[user]:password@]host[:port][/db] (query parameters may be db, "
                       "password; percent-encode ? & # / in a password)")


# --- repr(settings) and the startup line

ALL_SECRETS = {
    "API_KEY": "apikey-s3cret-1,apikey-s3cret-2",
    "SMTP_USER": "mailer",
    "SMTP_PASSWORD": "smtp-s3cret",
    "IDEMPOTENCY_SECRET": "idem-s3cret",
    "REDIS_URL": "redis+sentinel://:redis-s3cret@s1:26379,s2:26379/herald?sentinel_password=sentinel-s3cret",
    "SMTP_FALLBACK_URLS": "smtps://backup:fallback-s3cret@backup.example:465",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel:otlp-userinfo-s3cret@collector.example:4318/"
                                   "?api-key=otlp-query-s3cret&token=otlp-token-s3cret",
}
SECRET_TEXTS = ("apikey-s3cret", "smtp-s3cret", "idem-s3cret", "redis-s3cret", "sentinel-s3cret", "fallback-s3cret",
                "otlp-userinfo-s3cret", "otlp-query-s3cret", "otlp-token-s3cret")


def test_repr_of_settings_shows_no_secret():
    settings = settings_from(ALL_SECRETS)
    _ = settings.redis_target, settings.relays  # cached: they must not bring a secret into repr() either
    shown = repr(settings)
    for secret in SECRET_TEXTS:
        assert secret not in shown, secret
    assert "smtp_host" in shown  # the rest is still there


def test_the_startup_line_shows_no_secret():
    out = settings_from(ALL_SECRETS).redacted()
    shown = repr(out)
    for secret in SECRET_TEXTS:
        assert secret not in shown, secret
    assert (out["api_keys"], out["smtp_password"], out["idempotency_secret"]) == ("set", "set", "set")
    assert out["otel_endpoint"] == "https://otel:***@collector.example:4318/?api-key=***&token=***"
    assert out["redis_url"] == "redis+sentinel://:***@s1:26379,s2:26379/herald?sentinel_password=***"


@pytest.mark.parametrize("endpoint, shown", [
    ("http://collector:4318", "http://collector:4318"),
    ("http://collector:4318/v1/traces?token=t0k", "http://collector:4318/v1/traces?token=***"),
    ("http://collector:4318/?a=1&b", "http://collector:4318/?a=***&***"),  # a bare ?TOKEN is all value
    ("http://collector:4318/#t0k", "http://collector:4318/"),
    ("http://[::1:4318/", "(not shown: not a URL)"),
])
def test_every_query_value_of_the_otlp_endpoint_is_masked(endpoint, shown):
    assert settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SDK_DISABLED": "true"}
                         ).redacted()["otel_endpoint"] == shown


# A field whose name says it may hold a secret. A match that is not one goes in NOT_SECRET, with the reason.
SECRET_NAME = re.compile(r"password|secret|key|token|credential|auth|url|endpoint|dsn")
NOT_SECRET = {
    "redis_key_prefix": "a prefix for Redis key names",
    "smtp_oauth_client_id": "an application's public identifier, shown on the startup line to tell apps apart",
    "smtp_oauth_scope": "the permissions asked for, public",
    "smtp_oauth_provider": "microsoft or google",
    "smtp_oauth_tenant": "the organisation's directory ID or domain, public",
    "smtp_auth_mechanism": "the name of an SMTP AUTH mechanism",
    "dkim_private_key_file": "the key file's path; the key itself is never shown (DkimKey.private_pem is out of repr)",
}


def test_every_field_named_like_a_secret_is_declared_secret():
    for f in dataclasses.fields(Settings):
        if SECRET_NAME.search(f.name) and f.name not in NOT_SECRET:
            assert f.metadata.get("secret"), f"Settings.{f.name} looks like a secret: declare it with secret()"
            assert not f.repr, f.name


def test_a_declared_secret_is_hidden_by_its_declaration():
    secret_fields = {f.name for f in dataclasses.fields(Settings) if f.metadata.get("secret")}
    assert {"api_keys", "smtp_password", "idempotency_secret", "redis_url", "otel_endpoint"} <= secret_fields
    for f in dataclasses.fields(Settings):
        if f.name in secret_fields:
            assert not f.repr, f.name
