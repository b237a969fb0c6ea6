"""The OAuth test support itself (issue #22): the token endpoint's grants and switches, and the SMTP test
server's XOAUTH2 / OAUTHBEARER logins, driven by plain `requests` and `smtplib` clients."""

from __future__ import annotations

import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.oauth_server import OAuthTestServer
from tests.support.smtp_server import MICROSOFT_REFUSAL, SmtpTestServer

CLIENT, SECRET = "app-1", "s3cret value"
SCOPE = "https://outlook.office365.com/.default"
MAILBOX = "sender@example.test"


@pytest.fixture
def oauth():
    with OAuthTestServer(token_lifetime=5.0) as server:
        server.register_client(CLIENT, SECRET, [SCOPE])
        server.register_client("public-app", None, ["https://mail.google.com/"])
        yield server


def client_credentials(oauth, secret=SECRET, scope=SCOPE, basic=False):
    form = {"grant_type": "client_credentials", "scope": scope}
    if basic:
        return requests.post(oauth.token_url, data=form, auth=(CLIENT, secret), timeout=5)
    return requests.post(oauth.token_url, data={**form, "client_id": CLIENT, "client_secret": secret}, timeout=5)


def refresh(oauth, refresh_token, client_id="public-app"):
    form = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": refresh_token}
    return requests.post(oauth.token_url, data=form, timeout=5)


# -- the token endpoint


@pytest.mark.parametrize("basic", [False, True])
def test_client_credentials_issues_a_short_lived_token(oauth, basic):
    answer = client_credentials(oauth, basic=basic)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 5 and body["scope"] == SCOPE
    assert oauth.valid(body["access_token"], user=MAILBOX, scope=SCOPE)
    assert not oauth.valid(body["access_token"], scope="https://mail.google.com/")
    assert oauth.requests == [("client_credentials", CLIENT)]
    assert oauth.client_auth == ["client_secret_basic" if basic else "client_secret_post"]
    assert SECRET not in repr(oauth) and body["access_token"] not in repr(oauth)


def test_client_credentials_refusals(oauth):
    wrong = client_credentials(oauth, secret="nope")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.json()["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    bad_scope = client_credentials(oauth, scope="https://mail.google.com/")
    assert bad_scope.status_code == 400 and bad_scope.json()["error"] == "invalid_scope"
    oauth.revoke_client(CLIENT)
    revoked = client_credentials(oauth)
    assert revoked.status_code == 401 and revoked.json()["error"] == "invalid_client"
    assert oauth.fetches == 3 and oauth.tokens_issued == 0


def test_refresh_grant_and_rotation(oauth):
    first = oauth.issue_refresh_token("public-app", MAILBOX)
    token = refresh(oauth, first).json()["access_token"]
    assert oauth.valid(token, user=MAILBOX) and not oauth.valid(token, user="someone@example.test")
    oauth.rotate_refresh_tokens = True
    rotated = refresh(oauth, first).json()
    assert rotated["refresh_token"] != first
    assert refresh(oauth, first).json()["error"] == "invalid_grant"  # the old one stopped working
    assert refresh(oauth, rotated["refresh_token"]).status_code == 200


def test_revoked_refresh_token_is_invalid_grant(oauth):
    refresh_token = oauth.issue_refresh_token("public-app", MAILBOX)
    oauth.revoke_refresh_token(refresh_token)
    answer = refresh(oauth, refresh_token)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert refresh(oauth, "rt-never-issued").json()["error"] == "invalid_grant"


def test_refresh_grant_checks_the_client_secret(oauth):
    refresh_token = oauth.issue_refresh_token(CLIENT, MAILBOX)
    assert refresh(oauth, refresh_token, client_id=CLIENT).json()["error"] == "invalid_client"
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    answer = requests.post(oauth.token_url, data=form, auth=(CLIENT, SECRET), timeout=5)
    assert answer.status_code == 200 and oauth.valid(answer.json()["access_token"], user=MAILBOX)


def test_concurrent_requests_are_each_answered(oauth):
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client_credentials(oauth), range(24)))
    tokens = {answer.json()["access_token"] for answer in answers}
    assert len(tokens) == 24 and oauth.fetches == 24 and oauth.tokens_issued == 24
    assert all(oauth.valid(token) for token in tokens)


def test_tokens_really_expire():
    with OAuthTestServer(token_lifetime=1) as oauth:
        oauth.register_client(CLIENT, SECRET, [SCOPE])
        token = client_credentials(oauth).json()["access_token"]
        assert oauth.valid(token)
        time.sleep(1.1)
        assert not oauth.valid(token)


def test_expire_all_invalidates_issued_tokens_only(oauth):
    old = client_credentials(oauth).json()["access_token"]
    oauth.expire_all()
    new = client_credentials(oauth).json()["access_token"]
    assert not oauth.valid(old) and oauth.valid(new)


@pytest.mark.parametrize("error", ["invalid_client", "unauthorized_client", "invalid_grant", "invalid_scope"])
def test_fail_answers_the_oauth_error_once(oauth, error):
    oauth.fail(error)
    answer = client_credentials(oauth)
    assert answer.status_code == (401 if error == "invalid_client" else 400)
    assert answer.json()["error"] == error and answer.json()["error_description"]
    assert client_credentials(oauth).status_code == 200  # times=1


def test_fail_status_and_delay(oauth):
    oauth.fail_status(503)
    page = client_credentials(oauth)
    assert page.status_code == 503 and page.headers["Content-Type"].startswith("text/html")
    oauth.fail_status(502, html=False)
    empty = client_credentials(oauth)
    assert empty.status_code == 502 and empty.text == ""
    oauth.delay(0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client_credentials_with_timeout(oauth, 0.2)
    assert client_credentials(oauth).status_code == 200  # the stall was for one request only


def client_credentials_with_timeout(oauth, timeout):
    form = {"grant_type": "client_credentials", "scope": SCOPE, "client_id": CLIENT, "client_secret": SECRET}
    return requests.post(oauth.token_url, data=form, timeout=timeout)


# -- the SMTP server's OAuth logins


def xoauth2(user, token):
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user, token):
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01"


def login(server, mechanism, wire, initial_response_ok=True):
    """smtplib's AUTH: the SASL response first, then "" for a 334 error challenge. (code, reply)."""
    answers = iter([wire, ""])
    with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
        conn.ehlo()
        offered = conn.esmtp_features["auth"].split()
        try:
            code, reply = conn.auth(mechanism, lambda challenge=None: next(answers),
                                    initial_response_ok=initial_response_ok)
        except smtplib.SMTPAuthenticationError as err:
            code, reply = err.smtp_code, err.smtp_error
    return offered, code, reply.decode()


@pytest.mark.parametrize("mechanism, wire", [("XOAUTH2", xoauth2), ("OAUTHBEARER", oauthbearer)])
@pytest.mark.parametrize("initial_response_ok", [True, False])
def test_smtp_oauth_login_accepts_a_valid_token(oauth, mechanism, wire, initial_response_ok):
    token = client_credentials(oauth).json()["access_token"]
    with SmtpTestServer(oauth=oauth, auth_mechanisms=("XOAUTH2", "OAUTHBEARER")) as server:
        offered, code, reply = login(server, mechanism, wire(MAILBOX, token), initial_response_ok)
    assert offered == ["OAUTHBEARER", "XOAUTH2"]
    assert (code, reply) == (235, "2.7.0 Authentication successful")
    assert server.auth_mechanisms_used == [mechanism] and server.auth_failures == 0
    assert server.presented_tokens == [token] and token not in repr(server.oauth_logins)


@pytest.mark.parametrize("mechanism, wire, status", [("XOAUTH2", xoauth2, '"401"'),
                                                     ("OAUTHBEARER", oauthbearer, '"invalid_token"')])
def test_smtp_oauth_login_refuses_an_expired_token(oauth, mechanism, wire, status):
    token = client_credentials(oauth).json()["access_token"]
    oauth.expire_all()
    challenges = []
    with SmtpTestServer(oauth=oauth, oauth_refusal=MICROSOFT_REFUSAL) as server:
        answers = iter([wire(MAILBOX, token), ""])
        with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
            conn.ehlo()
            assert conn.esmtp_features["auth"].split() == ["LOGIN", "OAUTHBEARER", "PLAIN", "XOAUTH2"]
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                conn.auth(mechanism, lambda challenge=None: challenges.append(challenge) or next(answers))
            assert conn.mail("a@example.test")[0] == 530  # still not logged in
    assert (refused.value.smtp_code, refused.value.smtp_error) == (535, b"5.7.3 Authentication unsuccessful")
    assert status.encode() in challenges[1] and b'"schemes": "bearer"' in challenges[1]
    assert server.auth_attempts == 1 and server.auth_failures == 1
    assert [(login.mechanism, login.accepted) for login in server.oauth_logins] == [(mechanism, False)]


def test_smtp_oauth_login_checks_the_scope_and_the_mailbox(oauth):
    token = client_credentials(oauth).json()["access_token"]
    with SmtpTestServer(oauth=oauth, auth_mechanisms=("XOAUTH2",), oauth_scope="https://mail.google.com/") as server:
        offered, code, reply = login(server, "XOAUTH2", xoauth2(MAILBOX, token))
    assert offered == ["XOAUTH2"] and (code, reply) == (535, "5.7.8 Username and Password not accepted")
    oauth.register_client("one-mailbox", "x", [SCOPE], mailboxes=[MAILBOX])
    form = {"grant_type": "client_credentials", "client_id": "one-mailbox", "client_secret": "x", "scope": SCOPE}
    token = requests.post(oauth.token_url, data=form, timeout=5).json()["access_token"]
    with SmtpTestServer(oauth=oauth, auth_mechanisms=("OAUTHBEARER",)) as server:
        assert login(server, "OAUTHBEARER", oauthbearer("other@example.test", token))[1] == 535
        assert login(server, "OAUTHBEARER", oauthbearer(MAILBOX.upper(), token))[1] == 235
