"""Delivery: connection reuse, transparent reconnects, bounded retries, the breaker.

Each test counts what a real SMTP server actually received.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from herald_smtp.config import settings_from
from tests.support.client import assert_error, send, smtp_env
from tests.support.smtp_server import SmtpTestServer


@pytest.fixture
def service(make_client, clock):
    """A client for `server` with extra environment variables; its breaker and pool run on the fake `clock`."""

    def make(server: SmtpTestServer, **env):
        return make_client(settings_from(smtp_env(server) | {k.upper(): str(v) for k, v in env.items()}),
                           clock=clock)

    return make


def mail(n: int) -> dict:
    return {"to": f"user{n}@example.com", "params": {"code": str(n)}}


# --- connection reuse


def test_healthy_connection_carries_many_mails_with_one_handshake(server_factory, service):
    server = server_factory(starttls=True, auth=("u", "p"))
    client = service(server)
    for n in range(5):
        assert send(client, mail(n)).status_code == 200
    assert len(server.wait_for(5)) == 5
    assert server.connections == 1
    assert server.auth_attempts == 1


def test_connection_is_replaced_after_max_messages(server_factory, service):
    server = server_factory()
    client = service(server, smtp_max_messages_per_connection=2)
    for n in range(5):
        assert send(client, mail(n)).status_code == 200
    assert server.connections == 3


def test_connection_idle_past_smtp_idle_seconds_is_replaced(server_factory, service, clock):
    server = server_factory()
    client = service(server, smtp_idle_seconds=0.3)
    assert send(client, mail(1)).status_code == 200
    assert send(client, mail(2)).status_code == 200
    assert server.connections == 1
    clock.advance(0.5)
    assert send(client, mail(3)).status_code == 200
    assert server.connections == 2


# --- dead connections are replaced transparently


def test_server_idle_timeout_is_invisible_to_the_caller(server_factory, service):
    server = server_factory(idle_timeout=0.3)
    client = service(server, smtp_retries=0)  # not a retry: the reconnect is free
    assert send(client, mail(1)).status_code == 200
    time.sleep(0.6)  # the server hangs up on the idle pooled connection
    assert send(client, mail(2)).status_code == 200
    assert len(server.wait_for(2)) == 2
    assert server.connections == 2


def test_server_hangup_between_mails_is_invisible_to_the_caller(server_factory, service):
    server = server_factory(starttls=True, auth=("u", "p"))
    client = service(server, smtp_retries=0)
    assert send(client, mail(1)).status_code == 200
    server.close_connections()
    assert send(client, mail(2)).status_code == 200
    assert len(server.wait_for(2)) == 2


def test_421_at_mail_from_on_a_reused_connection_reconnects(server_factory, service):
    server = server_factory()
    client = service(server, smtp_retries=0)
    assert send(client, mail(1)).status_code == 200
    server.inject("mail", reply="421 4.4.2 idle too long, closing", times=1)
    assert send(client, mail(2)).status_code == 200
    assert len(server.wait_for(2)) == 2
    assert server.connections == 2


# --- retries: transient failures, only before the message was committed


@pytest.mark.parametrize("phase, reply", [("rcpt", "451 4.3.0 try later"), ("mail", "452 4.3.1 out of storage"),
                                          ("data", "451 4.3.0 local error"), ("ehlo", "421 4.3.2 busy")])
def test_transient_failure_before_data_is_retried_and_sends_once(server_factory, service, phase, reply):
    server = server_factory()
    server.inject(phase, reply=reply, times=2)
    client = service(server, smtp_retries=2)
    assert send(client, mail(1)).status_code == 200
    assert len(server.wait_for(1)) == 1
    time.sleep(0.1)
    assert len(server.messages) == 1


def test_retries_are_bounded_by_smtp_retries(server_factory, service):
    server = server_factory()
    server.inject("rcpt", reply="451 4.3.0 try later", times=3)
    client = service(server, smtp_retries=2)
    body = assert_error(send(client, mail(1)), 500, "send_failed", "451 4.3.0")
    assert body["retryable"] is True
    assert server.messages == []
    # The fault is used up after 3 attempts (1 + SMTP_RETRIES); the next request goes through.
    assert send(client, mail(2)).status_code == 200


def test_dropped_connection_before_mail_is_retried(server_factory, service):
    server = server_factory()
    server.inject("mail", drop=True, times=1)
    assert send(service(server), mail(1)).status_code == 200
    assert len(server.wait_for(1)) == 1


def test_drop_after_rcpt_is_retried(server_factory, service):
    server = server_factory()
    server.inject("data", drop=True, times=1)
    assert send(service(server), mail(1)).status_code == 200
    assert len(server.wait_for(1)) == 1


def test_no_retry_after_the_final_dot_even_when_the_connection_drops(server_factory, service):
    server = server_factory()
    server.inject("message", drop=True, times=1)
    assert_error(send(service(server, smtp_retries=2), mail(1)), 500, "send_failed", "outcome unknown")
    time.sleep(0.3)
    assert len(server.dropped) == 1
    assert server.messages == []  # a retry would have delivered it a second time


def test_no_retry_after_the_final_dot_on_a_4xx_reply(server_factory, service):
    server = server_factory()
    server.inject("message", reply="451 4.3.0 queue full", times=1)
    body = assert_error(send(service(server, smtp_retries=2), mail(1)), 500, "send_failed", "451 4.3.0 queue full")
    assert body["retryable"] is True
    time.sleep(0.3)
    assert server.messages == []


def test_permanent_refusal_is_not_retried(server_factory, service):
    server = server_factory()
    server.inject("mail", reply="550 5.7.1 sender not allowed", times=1)
    assert_error(send(service(server, smtp_retries=2), mail(1)), 500, "send_failed", "550 5.7.1")
    assert server.messages == []
    assert server.connections == 1


def test_mail_accepted_then_broken_quit_is_a_success(server_factory, service):
    server = server_factory()
    server.inject("quit", drop=True)
    client = service(server, smtp_max_messages_per_connection=1)  # QUIT after every mail
    for n in range(2):
        assert send(client, mail(n)).status_code == 200
    assert len(server.wait_for(2)) == 2
    # The QUIT is not waited for (it costs the request nothing), so whether aiosmtpd reads it before
    # the close is a race: count the connections retired instead.
    assert server.connections == 2


# --- circuit breaker


def test_breaker_opens_fails_fast_half_opens_and_closes(server_factory, service, clock, caplog):
    caplog.set_level(logging.INFO, logger="herald_smtp.mailer")
    server = server_factory()
    server.inject("ehlo", reply="421 4.3.2 service not available")
    client = service(server, smtp_retries=0, smtp_circuit_threshold=2, smtp_circuit_cooldown_seconds=1)

    for n in range(2):
        assert_error(send(client, mail(n)), 500, "send_failed", "421")
    assert server.connections == 2

    fast = send(client, mail(3))
    assert_error(fast, 503, "provider_down", "circuit breaker is open")
    assert 1 <= int(fast.headers["Retry-After"]) <= 1
    assert server.connections == 2  # failed fast: the server saw nothing
    assert "smtp circuit open: failing fast" in caplog.messages

    clock.advance(1.1)  # cooldown over: one trial; it fails, so the circuit opens again
    assert_error(send(client, mail(4)), 500, "send_failed", "421")
    assert_error(send(client, mail(5)), 503, "provider_down")
    assert server.connections == 3

    server.reset_faults()
    clock.advance(1.1)
    assert send(client, mail(6)).status_code == 200  # the trial succeeds and closes the circuit
    assert send(client, mail(7)).status_code == 200
    assert "smtp circuit closed: the SMTP server answers again" in caplog.messages
    assert len(server.wait_for(2)) == 2


def test_breaker_ignores_refusals_that_are_not_connection_failures(server_factory, service):
    server = server_factory()
    server.reject_rcpt = {"user1@example.com"}
    client = service(server, smtp_circuit_threshold=2)
    for _ in range(4):
        assert_error(send(client, mail(1)), 400, "invalid_destination")
    assert send(client, mail(2)).status_code == 200


def test_circuit_open_releases_the_idempotency_key(server_factory, service, clock):
    server = server_factory()
    server.inject("ehlo", reply="421 4.3.2 busy")
    client = service(server, smtp_retries=0, smtp_circuit_threshold=1, smtp_circuit_cooldown_seconds=0.5)
    assert_error(send(client, mail(1)), 500, "send_failed")
    assert_error(send(client, mail(1) | {"idempotency_key": "k-breaker"}), 503, "provider_down")
    server.reset_faults()
    clock.advance(0.6)
    response = send(client, mail(1) | {"idempotency_key": "k-breaker"})
    assert response.status_code == 200 and "Idempotent-Replayed" not in response.headers


def test_sender_refused_at_rcpt_is_send_failed_not_a_bad_recipient(server_factory, service):
    server = server_factory()
    server.inject("rcpt", reply="553 5.7.1 <noreply@herald.test>: Sender address rejected: not owned by user")
    body = assert_error(send(service(server), mail(1)), 500, "send_failed", "sender or relaying refused")
    assert body["retryable"] is False


def test_a_stall_is_a_retryable_timeout_even_on_a_reused_connection(server_factory, service):
    server = server_factory()
    client = service(server, smtp_retries=0)
    assert send(client, mail(1)).status_code == 200
    server.inject("mail", delay=2.0, times=1)
    body = assert_error(send(client, mail(2) | {"timeout_seconds": 1}), 500, "send_failed", "timed out")
    assert body["retryable"] is True


def test_a_greeting_stall_is_bounded_by_the_budget(server_factory, service):
    server = server_factory()
    server.inject("ehlo", delay=3.0, times=1)
    body = assert_error(send(service(server, smtp_retries=0), mail(1) | {"timeout_seconds": 1}), 500,
                        "send_failed", "timed out")
    assert body["retryable"] is True and server.messages == []


def test_stalls_count_towards_the_breaker(server_factory, service):
    server = server_factory()
    server.inject("mail", delay=1.5)
    client = service(server, smtp_retries=0, smtp_circuit_threshold=2, smtp_timeout_seconds=0.5)
    for n in range(2):
        assert_error(send(client, mail(n)), 500, "send_failed", "timed out")
    assert_error(send(client, mail(3)), 503, "provider_down", "circuit breaker is open")


def test_bad_credentials_do_not_open_the_breaker(server_factory, service):
    server = server_factory(auth=("u", "p"))
    client = service(server, smtp_password="wrong", smtp_circuit_threshold=2)
    for n in range(4):
        assert_error(send(client, mail(n)), 500, "send_failed", "535")


def test_half_open_lets_exactly_one_trial_through(server_factory, service, clock):
    server = server_factory()
    server.inject("ehlo", reply="421 4.3.2 busy", times=1)
    client = service(server, smtp_retries=0, smtp_circuit_threshold=1, smtp_circuit_cooldown_seconds=0.3)
    assert_error(send(client, mail(0)), 500, "send_failed", "421")
    clock.advance(0.4)
    server.inject("message", delay=1.0, times=1)  # the trial is slow: the others arrive while it runs
    answers = {}

    def call(n):
        answers[n] = send(client, mail(n))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # real time: lets the trial reach the server (and stall there) before the next starts
    for t in threads:
        t.join()
    statuses = sorted(a.status_code for a in answers.values())
    assert statuses == [200, 503, 503, 503]
    assert len(server.wait_for(1)) == 1 and server.connections == 2
    assert send(client, mail(9)).status_code == 200  # the trial closed the circuit


def test_idle_connections_age_out_under_steady_traffic(server_factory, service, clock):
    server = server_factory()
    server.inject("message", delay=0.3, times=4)
    client = service(server, smtp_idle_seconds=0.5)
    burst = [threading.Thread(target=send, args=(client, mail(n))) for n in range(4)]
    for t in burst:
        t.start()
    for t in burst:
        t.join()
    assert server.open_connections == 4
    for n in range(8):  # one mail every 0.2 s keeps one connection warm
        assert send(client, mail(10 + n)).status_code == 200
        clock.advance(0.2)
    assert server.open_connections == 1
