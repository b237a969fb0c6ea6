"""Sending with OAuth 2.0 SMTP AUTH against real servers: a local token endpoint issuing short-lived tokens
(tests/support/oauth_server.py) and an SMTP server that checks every XOAUTH2/OAUTHBEARER token against it.

What must hold: one token per relay per process, shared by concurrent sends; a send after expiry fetches one
new token and no request fails for it; a token the server refuses is fetched anew and tried once more; a
second refusal and a refused client are setup errors with nothing transmitted; an unreachable token endpoint
is transient; no secret or token ever in a log line or an answer.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import quote, urlencode

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from herald_smtp import tracing
from herald_smtp.config import settings_from
from herald_smtp.tools.doctor import run_doctor
from tests.support.client import assert_error, send, smtp_env
from tests.support.oauth_server import OAuthTestServer
from tests.support.smtp_server import MICROSOFT_REFUSAL

MAILBOX = "noreply@herald.test"
CLIENT_ID, CLIENT_SECRET, SCOPE = "herald-app", "client-s3cret-value", "https://outlook.office365.com/.default"


@pytest.fixture
def oauth():
    with OAuthTestServer(token_lifetime=5) as server:
        server.register_client(CLIENT_ID, CLIENT_SECRET, [SCOPE, "https://mail.google.com/"])
        yield server


@pytest.fixture
def relay(server_factory, oauth):
    """STARTTLS, then AUTH XOAUTH2 or OAUTHBEARER only, each token checked with the token endpoint."""
    return server_factory(starttls=True, oauth=oauth, auth_mechanisms=("XOAUTH2", "OAUTHBEARER"),
                          oauth_scope=SCOPE, oauth_refusal=MICROSOFT_REFUSAL)


def oauth_env(relay, oauth, **changes) -> dict[str, str]:
    env = smtp_env(relay) | {"SMTP_USER": MAILBOX, "SMTP_OAUTH_TOKEN_URL": oauth.token_url,
                             "SMTP_OAUTH_CLIENT_ID": CLIENT_ID, "SMTP_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
                             "SMTP_OAUTH_SCOPE": SCOPE}
    env.pop("SMTP_PASSWORD", None)
    return env | changes


@pytest.fixture
def service(make_client, relay, oauth):
    def build(**changes):
        return make_client(settings_from(oauth_env(relay, oauth, **changes)))

    return build


def assert_no_secret(text: str, oauth, relay) -> None:
    for secret in (CLIENT_SECRET, *relay.presented_tokens):
        assert secret not in text


def test_the_first_send_fetches_one_token_and_logs_in_with_xoauth2(service, relay, oauth, caplog):
    caplog.set_level(logging.DEBUG)
    response = send(service(), {"to": "a@example.com"})
    assert response.status_code == 200, response.get_json()
    assert oauth.fetches == 1 and oauth.requests == [("client_credentials", CLIENT_ID)]
    [login] = relay.oauth_logins
    assert (login.mechanism, login.user, login.accepted) == ("XOAUTH2", MAILBOX, True)
    assert len(relay.wait_for(1)) == 1
    assert any(r.getMessage() == "oauth token fetched" for r in caplog.records)
    assert_no_secret(caplog.text + response.get_data(as_text=True), oauth, relay)


def test_concurrent_sends_share_one_fetch(service, relay, oauth):
    client = service()
    oauth.delay(0.5)  # the first fetch is slow: the others must wait for it, not fetch their own
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(send(client, {"to": "a@example.com"}).status_code))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [200] * 6
    assert oauth.fetches == 1
    assert len(relay.wait_for(6)) == 6


def test_a_send_after_expiry_fetches_one_new_token_and_no_request_fails(service, relay, oauth):
    oauth.token_lifetime = 1
    client = service(SMTP_MAX_MESSAGES_PER_CONNECTION="1")  # every send logs in on a new connection
    assert send(client, {"to": "a@example.com"}).status_code == 200
    time.sleep(1.3)  # the token has expired
    assert send(client, {"to": "b@example.com"}).status_code == 200
    assert oauth.fetches == 2
    assert [login.accepted for login in relay.oauth_logins] == [True, True]  # never a refused, stale token


def test_a_token_within_its_lifetime_is_reused_by_new_connections(service, relay, oauth):
    client = service(SMTP_MAX_MESSAGES_PER_CONNECTION="1")
    for to in ("a@example.com", "b@example.com", "c@example.com"):
        assert send(client, {"to": to}).status_code == 200
    assert oauth.fetches == 1 and len(relay.oauth_logins) == 3


def test_a_refused_token_is_fetched_anew_and_tried_once_more(service, relay, oauth):
    client = service(SMTP_MAX_MESSAGES_PER_CONNECTION="1")
    assert send(client, {"to": "a@example.com"}).status_code == 200
    oauth.expire_all()  # revoked at the provider: our cached token is still "fresh" by its expires_in
    response = send(client, {"to": "b@example.com"})
    assert response.status_code == 200, response.get_json()
    assert oauth.fetches == 2
    assert [login.accepted for login in relay.oauth_logins] == [True, False, True]
    assert len(relay.wait_for(2)) == 2


def test_a_second_refusal_is_a_setup_error_with_nothing_transmitted(server_factory, make_client, oauth):
    # The server wants a scope the token never carries: every fresh token is refused too.
    strict = server_factory(starttls=True, oauth=oauth, auth_mechanisms=("XOAUTH2",),
                            oauth_scope="https://mail.google.com/", oauth_refusal=MICROSOFT_REFUSAL)
    client = make_client(settings_from(oauth_env(strict, oauth)))
    body = assert_error(send(client, {"to": "a@example.com", "idempotency_key": "k-refused"}), 500, "send_failed",
                        "535")
    # Microsoft's 535 5.7.3: the provider table names the Exchange Online service principal step.
    assert body["retryable"] is False and "New-ServicePrincipal" in body["error_message"]
    assert [login.accepted for login in strict.oauth_logins] == [False, False]  # one retry, not more
    assert oauth.fetches == 2
    assert strict.messages == [] and not any(verb == "MAIL" for verb, _ in strict.commands)


@pytest.mark.parametrize("error, description", [
    ("invalid_client", "AADSTS7000215"), ("unauthorized_client", ""), ("invalid_grant", ""),
    ("invalid_scope", "AADSTS70011")])
def test_a_refusal_from_the_token_endpoint_is_a_setup_error_naming_it(service, relay, oauth, caplog, error,
                                                                      description):
    oauth.fail(error, times=10)
    payload = {"to": "a@example.com", "idempotency_key": f"k-{error}"}
    body = assert_error(send(service(), payload), 500, "send_failed", error)
    assert body["retryable"] is False and description in body["error_message"]
    if error == "invalid_client":  # Entra's AADSTS7000215: the provider table names the fix
        assert "(fix: " in body["error_message"] and "Value" in body["error_message"]
    assert oauth.fetches == 1  # a setup error is not retried
    assert relay.oauth_logins == [] and relay.messages == []
    line = next(r for r in caplog.records if r.getMessage() == "oauth token fetch failed")
    assert error in line.errmsg  # type: ignore[attr-defined]
    assert_no_secret(caplog.text + str(body), oauth, relay)
    oauth.reset()
    assert send(service(), payload).status_code == 200  # released: the same key sends once it is fixed


def test_an_unavailable_token_endpoint_is_transient_and_retried(service, relay, oauth):
    oauth.fail_status(503, times=1)
    assert send(service(), {"to": "a@example.com"}).status_code == 200  # the in-request retry fetches again
    assert oauth.fetches == 2
    oauth.fail_status(503, times=10)
    client = service(SMTP_MAX_MESSAGES_PER_CONNECTION="1")
    oauth.expire_all()
    body = assert_error(send(client, {"to": "b@example.com"}), 500, "send_failed", "HTTP 503")
    assert body["retryable"] is True


def test_a_rotated_refresh_token_replaces_the_old_one(server_factory, make_client, oauth, caplog):
    caplog.set_level(logging.INFO)
    oauth.rotate_refresh_tokens = True
    oauth.token_lifetime = 1
    refresh = oauth.issue_refresh_token(CLIENT_ID, MAILBOX, ["https://mail.google.com/"])
    server = server_factory(starttls=True, oauth=oauth, auth_mechanisms=("XOAUTH2",),
                            oauth_scope="https://mail.google.com/")
    env = oauth_env(server, oauth, SMTP_OAUTH_SCOPE="https://mail.google.com/", SMTP_OAUTH_REFRESH_TOKEN=refresh,
                    SMTP_MAX_MESSAGES_PER_CONNECTION="1")
    client = make_client(settings_from(env))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    time.sleep(1.3)
    # The old refresh token stopped working at the first refresh: only the rotated one gets a token now.
    assert send(client, {"to": "b@example.com"}).status_code == 200
    assert [grant for grant, _ in oauth.requests] == ["refresh_token", "refresh_token"]
    assert any("refresh token rotated" in r.getMessage() for r in caplog.records)
    assert refresh not in caplog.text


def test_oauthbearer_when_the_server_offers_only_it(server_factory, make_client, oauth):
    server = server_factory(starttls=True, oauth=oauth, auth_mechanisms=("OAUTHBEARER",), oauth_scope=SCOPE)
    assert send(make_client(settings_from(oauth_env(server, oauth))), {"to": "a@example.com"}).status_code == 200
    assert [login.mechanism for login in server.oauth_logins] == ["OAUTHBEARER"]


def test_a_server_without_oauth_mechanisms_is_a_setup_error_naming_both_sides(server_factory, make_client, oauth):
    server = server_factory(starttls=True, auth=("user", "pw"))  # PLAIN and LOGIN only
    body = assert_error(send(make_client(settings_from(oauth_env(server, oauth))), {"to": "a@example.com"}), 500,
                        "send_failed", "OAuth needs XOAUTH2 or OAUTHBEARER")
    assert body["retryable"] is False and "PLAIN" in body["error_message"]
    assert oauth.fetches == 0  # no token fetched for a server that cannot take it


def test_the_doctor_logs_in_with_the_token(relay, oauth):
    lines: list[str] = []
    code = run_doctor(settings_from(oauth_env(relay, oauth)), None, out=lines.append)
    assert code == 0, lines
    assert any("logged in as noreply@herald.test with XOAUTH2" in line for line in lines)
    assert not any(CLIENT_SECRET in line for line in lines)


def test_a_slow_token_endpoint_counts_against_the_request_budget(service, relay, oauth):
    oauth.delay(5, times=5)
    started = time.monotonic()
    body = assert_error(send(service(), {"to": "a@example.com", "timeout_seconds": 1}), 500, "send_failed",
                        "timed out")
    assert time.monotonic() - started < 3  # the 1 s budget (plus housekeeping), not the endpoint's 5 s
    assert body["retryable"] is True and relay.messages == []


def test_the_token_fetch_is_a_span_without_secrets(service, relay, oauth):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        client = service()
        oauth.fail("invalid_client", times=1)
        assert send(client, {"to": "a@example.com"}).status_code == 500
        assert send(client, {"to": "a@example.com"}).status_code == 200
    finally:
        tracing.use(None)
        provider.shutdown()
    fetches = [s for s in exporter.get_finished_spans() if s.name == "oauth.token"]
    assert [s.status.status_code for s in fetches] == [StatusCode.ERROR, StatusCode.UNSET]
    assert fetches[0].attributes["herald.oauth.grant"] == "client_credentials"
    assert "invalid_client" in (fetches[0].status.description or "")
    everything = repr([(s.name, dict(s.attributes or {}), s.status.description, [e.attributes for e in s.events])
                       for s in exporter.get_finished_spans()])
    assert_no_secret(everything, oauth, relay)


def test_a_fallback_relay_logs_in_with_oauth(server_factory, make_client, relay, oauth, caplog):
    down = server_factory()
    down.stop()  # the primary refuses connections: the mail goes to the fallback, which takes tokens only
    query = urlencode({"oauth_token_url": oauth.token_url, "oauth_client_id": CLIENT_ID, "oauth_scope": SCOPE,
                       "ca_file": relay.ca_file})
    entry = f"smtp://{quote(MAILBOX, safe='')}:{quote(CLIENT_SECRET, safe='')}@{relay.host}:{relay.port}?{query}"
    env = smtp_env(down) | {"SMTP_FALLBACK_URLS": entry}
    response = send(make_client(settings_from(env)), {"to": "a@example.com"})
    assert response.status_code == 200, response.get_json()
    assert [(login.mechanism, login.user, login.accepted) for login in relay.oauth_logins] == [
        ("XOAUTH2", MAILBOX, True)]
    assert oauth.fetches == 1 and len(relay.wait_for(1)) == 1
    assert_no_secret(caplog.text, oauth, relay)


def test_a_pooled_connection_keeps_sending_after_its_token_expired(service, relay, oauth):
    oauth.token_lifetime = 1
    client = service()
    assert send(client, {"to": "a@example.com"}).status_code == 200
    time.sleep(1.3)  # the token that logged this connection in has expired; the session has not
    assert send(client, {"to": "b@example.com"}).status_code == 200
    assert oauth.fetches == 1 and len(relay.oauth_logins) == 1 and relay.connections == 1


def test_the_doctor_names_the_grant_lifetime_and_scope_never_the_token(relay, oauth):
    lines: list[str] = []
    assert run_doctor(settings_from(oauth_env(relay, oauth)), None, out=lines.append) == 0, lines
    [token] = [line for line in lines if line.split()[1:2] == ["token"]]
    assert token.startswith("ok") and "client_credentials grant from 127.0.0.1" in token
    assert "a token for 5 s" in token and SCOPE in token
    assert lines.index(token) < next(i for i, line in enumerate(lines) if line.split()[1:2] == ["auth"])
    assert_no_secret("\n".join(lines), oauth, relay)


def test_the_doctor_fails_at_the_token_step_with_the_endpoints_refusal_and_its_fix(relay, oauth):
    oauth.fail("invalid_client", times=5)
    lines: list[str] = []
    assert run_doctor(settings_from(oauth_env(relay, oauth)), None, out=lines.append) == 1
    [failed] = [line for line in lines if line.startswith("FAIL")]
    assert failed.startswith("FAIL token") and "invalid_client" in failed and "AADSTS7000215" in failed
    assert "-> fix: check SMTP_OAUTH_CLIENT_ID" in failed
    assert relay.oauth_logins == []  # it stopped before AUTH


def test_a_forced_mechanism_the_server_does_not_offer_names_both(server_factory, make_client, oauth):
    server = server_factory(starttls=True, oauth=oauth, auth_mechanisms=("XOAUTH2",), oauth_scope=SCOPE)
    client = make_client(settings_from(oauth_env(server, oauth, SMTP_AUTH_MECHANISM="oauthbearer")))
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "not OAUTHBEARER")
    assert "XOAUTH2" in body["error_message"] and body["retryable"] is False
    assert server.oauth_logins == [] and oauth.fetches == 0
