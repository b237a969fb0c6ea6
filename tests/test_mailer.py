"""SMTP basics against real servers: TLS modes, AUTH, and how failures map to answers."""

from __future__ import annotations

import pytest

from herald_smtp.config import settings_from
from tests.support.client import assert_error, send, smtp_env, with_changes
from tests.support.net import free_port
from tests.support.smtp_server import SmtpTestServer


@pytest.fixture(scope="module")
def plain_server():
    with SmtpTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def implicit_tls_server(tmp_path_factory):
    with SmtpTestServer(implicit_tls=True, auth=("u", "p"), certdir=tmp_path_factory.mktemp("tls")) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(plain_server, implicit_tls_server):
    for server in (plain_server, implicit_tls_server):
        server.clear()
        server.reset_faults()


def test_implicit_tls_with_auth(make_client, implicit_tls_server):
    client = make_client(settings_from(smtp_env(implicit_tls_server)))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert len(implicit_tls_server.wait_for(1)) == 1
    assert implicit_tls_server.auth_attempts == 1


def test_plain_smtp_without_tls(make_client, plain_server):
    client = make_client(settings_from(smtp_env(plain_server)))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert len(plain_server.wait_for(1)) == 1


def test_starttls_required_but_not_offered_is_send_failed_not_a_downgrade(make_client, plain_server):
    settings = settings_from(smtp_env(plain_server) | {"SMTP_USE_STARTTLS": "true"})
    body = assert_error(send(make_client(settings), {"to": "a@example.com"}), 500, "send_failed",
                        "does not offer STARTTLS")
    assert body["retryable"] is False
    assert plain_server.messages == []


def test_wrong_password_is_send_failed_naming_authentication(settings, make_client, smtp):
    client = make_client(with_changes(settings, smtp_password="wrong-password"))
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "authentication failed: 535")
    assert "wrong-password" not in body["error_message"]
    assert smtp.messages == []


def test_untrusted_certificate_is_send_failed(settings, make_client, smtp):
    client = make_client(with_changes(settings, smtp_tls_ca_file=""))
    assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "certificate verification failed")
    assert smtp.messages == []


def test_tls_verify_false_accepts_the_untrusted_certificate(settings, make_client, smtp):
    client = make_client(settings_from(smtp_env(smtp) | {"SMTP_TLS_CA_FILE": "", "SMTP_TLS_VERIFY": "false"}))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert len(smtp.wait_for(1)) == 1


def test_implicit_tls_against_a_plain_port_fails_in_tls(make_client, plain_server):
    settings = settings_from(smtp_env(plain_server) | {"SMTP_USE_TLS": "true"})
    assert_error(send(make_client(settings), {"to": "a@example.com"}), 500, "send_failed", "SMTP tls failed")
    assert plain_server.messages == []


def test_connection_refused_is_retryable_send_failed(settings, make_client):
    client = make_client(with_changes(settings, smtp_port=free_port()))
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "SMTP connect failed")
    assert body["retryable"] is True


def test_temporary_rcpt_failure_is_retryable(client, smtp):
    smtp.inject("rcpt", reply="451 4.3.0 try again later")
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "451 4.3.0 try again later")
    assert body["retryable"] is True
    assert smtp.messages == []


def test_sender_refused_is_send_failed_with_reply(client, smtp):
    smtp.inject("mail", reply="553 5.7.1 sender not allowed")
    assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "553 5.7.1 sender not allowed")


def test_connection_lost_after_the_final_dot_is_an_unknown_outcome(client, smtp):
    smtp.inject("message", drop=True)
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "outcome unknown")
    assert body["retryable"] is False
    assert len(smtp.dropped) == 1 and smtp.messages == []


def test_request_timeout_caps_the_smtp_budget(client, smtp):
    # The server stalls RCPT for 3 s: within SMTP_TIMEOUT_SECONDS (5), beyond the request's 1.
    smtp.inject("rcpt", delay=3.0)
    body = assert_error(send(client, {"to": "a@example.com", "timeout_seconds": 1}), 500, "send_failed",
                        "timed out")
    assert body["retryable"] is True
    assert smtp.messages == []


def test_stall_after_the_final_dot_is_an_unknown_outcome(client, smtp):
    smtp.inject("message", delay=3.0)
    assert_error(send(client, {"to": "a@example.com", "timeout_seconds": 1}), 500, "send_failed",
                 "outcome unknown")


def test_accepted_mail_is_a_success_even_if_quit_breaks(client, smtp):
    smtp.inject("quit", drop=True)
    response = send(client, {"to": "a@example.com", "idempotency_key": "k-quit"})
    assert response.status_code == 200, response.get_json()
    assert len(smtp.wait_for(1)) == 1


@pytest.mark.parametrize("body", [
    ".leading dot\n..two dots\nend",
    "line one\n.\nMAIL FROM:<evil@example.com>\nstill the same mail",
    "windows\r\nline\r\nendings",
])
def test_body_lines_with_dots_arrive_intact_as_one_mail(client, smtp, body):
    response = send(client, {"to": "a@example.com", "body": body})
    assert response.status_code == 200
    [mail] = smtp.wait_for(1)
    assert mail.message.get_content().rstrip("\n").splitlines() == body.splitlines()
    assert mail.mail_from == "noreply@herald.test"
