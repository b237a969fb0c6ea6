"""OAuth 2.0 SMTP AUTH settings: the presets, what startup refuses (one line, never a secret), the startup line."""

from __future__ import annotations

import json

import pytest

from herald_smtp.config import ConfigError, settings_from
from herald_smtp.config.oauth import AuthMechanism

BASE = {"SMTP_HOST": "smtp.office365.com", "SMTP_FROM": "noreply@contoso.com", "SMTP_USER": "noreply@contoso.com"}
MICROSOFT = BASE | {"SMTP_OAUTH_PROVIDER": "microsoft", "SMTP_OAUTH_TENANT": "contoso.onmicrosoft.com",
                    "SMTP_OAUTH_CLIENT_ID": "0f1e2d3c-app", "SMTP_OAUTH_CLIENT_SECRET": "client-s3cret-value"}
GOOGLE = BASE | {"SMTP_HOST": "smtp.gmail.com", "SMTP_OAUTH_PROVIDER": "google", "SMTP_OAUTH_CLIENT_ID": "1234.apps",
                 "SMTP_OAUTH_CLIENT_SECRET": "client-s3cret-value", "SMTP_OAUTH_REFRESH_TOKEN": "refresh-s3cret-value"}
SECRETS = ("client-s3cret-value", "refresh-s3cret-value")


def test_the_microsoft_preset_builds_the_tenants_token_url_and_the_exchange_scope():
    oauth = settings_from(MICROSOFT).relays[0].oauth
    assert oauth is not None
    assert oauth.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert oauth.scope == "https://outlook.office365.com/.default"
    assert oauth.grant == "client_credentials"


def test_the_google_preset_uses_the_refresh_token_grant_and_the_mail_scope():
    oauth = settings_from(GOOGLE).relays[0].oauth
    assert oauth is not None
    assert (oauth.token_url, oauth.scope, oauth.grant) == ("https://oauth2.googleapis.com/token",
                                                           "https://mail.google.com/", "refresh_token")


def test_an_explicit_token_url_and_scope_override_the_preset():
    env = MICROSOFT | {"SMTP_OAUTH_TOKEN_URL": "http://127.0.0.1:8999/token", "SMTP_OAUTH_SCOPE": "smtp  send"}
    oauth = settings_from(env).relays[0].oauth
    assert oauth is not None and (oauth.token_url, oauth.scope) == ("http://127.0.0.1:8999/token", "smtp send")


def test_without_oauth_variables_the_relay_logs_in_with_its_password():
    relay = settings_from(BASE | {"SMTP_PASSWORD": "pw"}).relays[0]
    assert relay.oauth is None and relay.mechanism is AuthMechanism.AUTO


@pytest.mark.parametrize("changes, variable, expected", [
    ({"SMTP_PASSWORD": "pw"}, "SMTP_PASSWORD, SMTP_OAUTH_TOKEN_URL", "one of them"),
    ({"SMTP_USER": ""}, "SMTP_USER", "the mailbox"),
    ({"SMTP_OAUTH_TENANT": ""}, "SMTP_OAUTH_TENANT", "tenant"),
    ({"SMTP_OAUTH_CLIENT_ID": ""}, "SMTP_OAUTH_CLIENT_ID", "client"),
    ({"SMTP_OAUTH_CLIENT_SECRET": ""}, "SMTP_OAUTH_CLIENT_SECRET", "client secret"),
    ({"SMTP_OAUTH_PROVIDER": "yahoo"}, "SMTP_OAUTH_PROVIDER", "microsoft or google"),
    ({"SMTP_OAUTH_PROVIDER": "", "SMTP_OAUTH_TENANT": ""}, "SMTP_OAUTH_TOKEN_URL", "token endpoint"),
    ({"SMTP_OAUTH_TOKEN_URL": "http://login.example.com/token"}, "SMTP_OAUTH_TOKEN_URL", "https://"),
    ({"SMTP_OAUTH_TOKEN_URL": "ftp://login.example.com/token"}, "SMTP_OAUTH_TOKEN_URL", "https://"),
    ({"SMTP_OAUTH_SCOPE": "a\"b"}, "SMTP_OAUTH_SCOPE", "scopes"),
    ({"SMTP_AUTH_MECHANISM": "plain"}, "SMTP_AUTH_MECHANISM", "with OAuth"),
    ({"SMTP_AUTH_MECHANISM": "cram-md5"}, "SMTP_AUTH_MECHANISM", "auto or xoauth2"),
])
def test_startup_refuses_what_cannot_log_in_in_one_line(changes, variable, expected):
    with pytest.raises(ConfigError) as refused:
        settings_from(MICROSOFT | changes)
    message = str(refused.value)
    assert message.startswith(f"{variable}: expected") and expected in message and "\n" not in message
    assert not any(secret in message for secret in SECRETS)


def test_google_needs_its_refresh_token():
    with pytest.raises(ConfigError, match="^SMTP_OAUTH_REFRESH_TOKEN: expected"):
        settings_from(GOOGLE | {"SMTP_OAUTH_REFRESH_TOKEN": ""})


def test_an_oauth_mechanism_without_oauth_is_refused():
    with pytest.raises(ConfigError, match="^SMTP_AUTH_MECHANISM: expected plain, login or auto without OAuth"):
        settings_from(BASE | {"SMTP_PASSWORD": "pw", "SMTP_AUTH_MECHANISM": "xoauth2"})


def test_a_secret_that_cannot_travel_in_a_form_body_is_refused_without_quoting_it():
    with pytest.raises(ConfigError) as refused:
        settings_from(MICROSOFT | {"SMTP_OAUTH_CLIENT_SECRET": "client-s3cret-value\x07"})
    assert str(refused.value).startswith("SMTP_OAUTH_CLIENT_SECRET: expected printable ASCII")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("env", [MICROSOFT, GOOGLE], ids=["microsoft", "google"])
def test_the_startup_line_names_grant_host_client_scope_and_mechanism_never_a_secret(env):
    settings = settings_from(env)
    shown = json.dumps(settings.redacted(), default=str)
    relay = settings.redacted()["relays"][0]
    assert relay["auth_mechanism"] == "auto"
    assert relay["oauth"]["client_id"] == env["SMTP_OAUTH_CLIENT_ID"]
    assert relay["oauth"]["grant"] in ("client_credentials", "refresh_token")
    assert relay["oauth"]["token_host"] in ("login.microsoftonline.com", "oauth2.googleapis.com")
    assert relay["oauth"]["scope"] and relay["oauth"]["client_secret"] == "set"
    for secret in SECRETS:
        assert secret not in shown
        assert secret not in repr(settings) and secret not in repr(settings.relays)


FALLBACK = ("smtp://noreply%40contoso.com:client-s3cret-value@smtp.office365.com?oauth_provider=microsoft"
            "&oauth_tenant=contoso.com&oauth_client_id=0f1e2d3c-app")


def test_a_fallback_url_with_oauth_parameters_logs_in_with_tokens_and_its_password_is_the_client_secret():
    relay = settings_from(BASE | {"SMTP_PASSWORD": "pw", "SMTP_FALLBACK_URLS": FALLBACK}).relays[1]
    assert relay.oauth is not None and relay.password == ""
    assert relay.oauth.client_secret == "client-s3cret-value" and relay.user == "noreply@contoso.com"
    assert relay.oauth.token_url == "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token"
    assert "client-s3cret-value" not in repr(relay) + json.dumps(relay.redacted(), default=str)


@pytest.mark.parametrize("entry, expected", [
    (FALLBACK.replace("&oauth_tenant=contoso.com", ""), "oauth_tenant: expected the tenant"),
    (FALLBACK.replace(":client-s3cret-value", ""), "the password: expected the OAuth client's"),
    (FALLBACK.replace("noreply%40contoso.com:client-s3cret-value@", ""), "OAuth needs the mailbox"),
    (FALLBACK + "&auth=plain", "auth: xoauth2, oauthbearer or auto with OAuth"),
    (FALLBACK + "&oauth_token_url=http%3A%2F%2Flogin.example%2Ft", "https://"),
    ("smtp://u:pw@relay.example?auth=xoauth2", "auth: plain, login or auto without the oauth_ parameters"),
])
def test_a_fallback_urls_oauth_mistakes_are_named_without_quoting_it(entry, expected):
    with pytest.raises(ConfigError) as refused:
        settings_from(BASE | {"SMTP_PASSWORD": "pw", "SMTP_FALLBACK_URLS": entry})
    message = str(refused.value)
    assert message.startswith("SMTP_FALLBACK_URLS: expected entry 1") and expected in message
    assert "s3cret" not in message
