"""Failures an outside review proved: each is a setup error or a state the service must survive.

Real servers throughout (the aiosmtpd test server, or tests/support/slow_server.py
where a server must misbehave below SMTP).
"""

from __future__ import annotations

import time

import pytest

from herald_smtp.config import settings_from
from herald_smtp.smtp import relay as relay_module
from herald_smtp.smtp.breaker import OPEN
from herald_smtp.tools.doctor import run_doctor
from herald_smtp.web.services import EXTENSION
from tests.support.client import assert_error, send, smtp_env, with_changes
from tests.support.slow_server import SlowServer

SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"


def slow_env(server: SlowServer, **extra) -> dict[str, str]:
    return {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "noreply@herald.test",
            "SMTP_USE_STARTTLS": "false", "SMTP_TIMEOUT_SECONDS": "2", **extra}


# --- a port that does not speak SMTP


def test_a_non_smtp_greeting_is_a_setup_error_not_retried_and_released(make_client):
    with SlowServer(banner=SSH_BANNER) as server:
        client = make_client(settings_from(slow_env(server, SMTP_RETRIES="2")))
        body = assert_error(send(client, {"to": "a@example.com", "idempotency_key": "k-ssh"}), 500, "send_failed",
                            "not an SMTP server")
        assert body["retryable"] is False
        assert server.connections == 1  # no retry: another attempt would meet the same SSH server
        # Released, not kept: after the fix the same key really sends (here: the same refusal, freshly).
        assert "Idempotent-Replayed" not in send(client, {"to": "a@example.com", "idempotency_key": "k-ssh"}).headers


def test_a_non_smtp_greeting_opens_the_breaker(make_client):
    with SlowServer(banner=SSH_BANNER) as server:
        client = make_client(settings_from(slow_env(server, SMTP_CIRCUIT_THRESHOLD="2")))
        for _ in range(2):
            assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed")
        assert_error(send(client, {"to": "a@example.com"}), 503, "provider_down", "circuit")


def test_the_doctor_names_a_non_smtp_server():
    with SlowServer(banner=SSH_BANNER) as server:
        lines: list[str] = []
        code = run_doctor(settings_from(slow_env(server)), None, out=lines.append)
    assert code == 1
    [failed] = [line for line in lines if line.startswith("FAIL")]
    assert failed.startswith("FAIL banner") and "not an SMTP server" in failed and "SMTP_PORT" in failed


# --- 530 at MAIL FROM: the setup, not the message


def test_530_at_mail_from_is_released_so_the_fixed_setup_sends(client, smtp):
    smtp.inject("mail", reply="530 5.7.0 Authentication required", times=1)
    payload = {"to": "a@example.com", "idempotency_key": "k-530"}
    body = assert_error(send(client, payload), 500, "send_failed", "530")
    assert body["retryable"] is False
    response = send(client, payload)  # the operator fixed it; the same key must really send
    assert response.status_code == 200 and "Idempotent-Replayed" not in response.headers
    assert len(smtp.wait_for(1)) == 1


# --- a host name that cannot be encoded


@pytest.mark.parametrize("host", ["smtp..example.com", "a" * 64 + ".example.com"])
def test_an_unencodable_smtp_host_is_a_setup_error_not_a_crash(settings, make_client, host):
    # Startup refuses such a name; this is the path for a Settings built in code.
    client = make_client(with_changes(settings, smtp_host=host, smtp_retries=2))
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "SMTP_HOST")
    assert body["retryable"] is False
    lines: list[str] = []
    assert run_doctor(with_changes(settings, smtp_host=host), None, out=lines.append) == 1
    [failed] = [line for line in lines if line.startswith("FAIL")]
    assert failed.startswith("FAIL dns") and "SMTP_HOST" in failed


# --- the breaker's half-open trial


def test_a_half_open_trial_that_raises_a_bug_reopens_nothing_and_closes_nothing(server_factory, make_client,
                                                                                 clock, monkeypatch):
    server = server_factory()
    env = smtp_env(server) | {"SMTP_CIRCUIT_THRESHOLD": "1", "SMTP_CIRCUIT_COOLDOWN_SECONDS": "5",
                              "SMTP_RETRIES": "0"}
    client = make_client(settings_from(env), clock=clock)
    breaker = client.application.extensions[EXTENSION].send.mailer.primary.breaker
    server.inject("mail", drop=True, times=1)
    assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed")
    assert breaker.state == OPEN
    clock.advance(6)

    # A bug of ours during the trial (no real server can provoke one: a stand-in raises).
    def broken_transmit(*args, **kwargs):
        raise RuntimeError("a bug in the mailer")

    monkeypatch.setattr(relay_module.transport, "transmit", broken_transmit)
    assert_error(send(client, {"to": "a@example.com"}), 500, "internal_error")
    assert breaker.state != "closed", "a bug must not count as the server answering again"
    monkeypatch.undo()
    assert send(client, {"to": "a@example.com"}).status_code == 200  # the next trial decides
    assert breaker.state == "closed"


# --- housekeeping outside the budget


def test_stale_pooled_connections_are_not_quit_inside_the_request(server_factory, make_client, clock):
    server = server_factory()
    client = make_client(settings_from(smtp_env(server) | {"SMTP_IDLE_SECONDS": "1"}), clock=clock)
    assert send(client, {"to": "a@example.com"}).status_code == 200
    clock.advance(2)  # the pooled connection is now stale
    server.inject("quit", delay=3)  # a server slow to answer QUIT
    started = time.monotonic()
    assert send(client, {"to": "b@example.com"}).status_code == 200
    # Today's bug waits up to 1 s for the stale connection's QUIT reply; a fresh send takes ~10 ms.
    assert time.monotonic() - started < 0.8
