"""A relay's rate-limit or policy refusal (Postfix's `450 4.7.1 ... too much mail`) is answered at once.

Retrying it inside the request, on the same session, only feeds the relay's
error counter (Postfix slows every reply past smtpd_soft_error_limit and hangs
up at smtpd_hard_error_limit). So: one attempt, 500 send_failed retryable with
Retry-After, the key released, and the session that was refused is closed, not
pooled. Greylisting at RCPT is about the recipient and stays as it was.
Every test counts what a real SMTP server received.
"""

from __future__ import annotations

import time

import pytest

from herald_smtp.config import settings_from
from herald_smtp.smtp.classify import DEFAULT_RATE_RETRY_AFTER_SECONDS, evidence_of, retry_after_in
from herald_smtp.smtp.transport import MAIL, RCPT, SmtpFailure
from tests.support.client import assert_error, send, smtp_env
from tests.test_failover import chain_env, url_of
from tests.test_operations import metric

TOO_MUCH_MAIL = "450 4.7.1 Error: too much mail from 127.0.0.1"  # smtpd_client_message_rate_limit
TOO_MANY_RECIPIENTS = "450 4.7.1 Error: too many recipients from 127.0.0.1"  # smtpd_client_recipient_rate_limit


@pytest.fixture
def service(make_client):
    def make(server, **env):
        return make_client(settings_from(smtp_env(server) | {"IDEMPOTENCY_WAIT_SECONDS": "3"}
                                         | {k.upper(): str(v) for k, v in env.items()}))

    return make


def mail_commands(server) -> int:
    return sum(1 for verb, _ in server.commands if verb == "MAIL")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-at-a-time"])
@pytest.mark.parametrize("phase, reply", [("mail", TOO_MUCH_MAIL), ("rcpt", TOO_MUCH_MAIL),
                                          ("rcpt", TOO_MANY_RECIPIENTS)])
def test_a_rate_refusal_is_one_attempt_answered_at_once_on_a_session_that_is_then_closed(
        server_factory, service, pipelining, phase, reply):
    server = server_factory(pipelining=pipelining)
    client = service(server, smtp_retries=2)
    assert send(client, {"to": "warm@example.com"}).status_code == 200  # a pooled connection now
    assert server.connections == 1 and mail_commands(server) == 1

    server.inject(phase, reply=reply)
    # The session is closed without waiting for QUIT's reply: a stalled QUIT costs the request nothing.
    server.inject("quit", delay=3.0, times=1)
    payload = {"to": "a@example.com", "idempotency_key": f"k-rate-{phase}"}
    started = time.monotonic()
    response = send(client, payload)
    elapsed = time.monotonic() - started

    body = assert_error(response, 500, "send_failed", reply.split(" ", 1)[1])
    assert body["retryable"] is True
    assert response.headers["Retry-After"] == str(DEFAULT_RATE_RETRY_AFTER_SECONDS)
    assert mail_commands(server) == 2, "exactly one attempt: no in-request retry of a rate refusal"
    assert elapsed < 1.0, f"answered at once, no retries, no QUIT wait ({elapsed:.2f}s)"

    # The key was released: the same key, fault gone, really sends, on a new connection.
    server.reset_faults()
    again = send(client, payload)
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert [m.rcpt_tos for m in server.wait_for(2)] == [["warm@example.com"], ["a@example.com"]]
    assert server.connections == 2, "the refused session was closed, not pooled"
    relay = f"{server.host}:{server.port}"
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "herald_smtp_smtp_connections_opened_total", relay=relay) == 2
    assert metric(text, "herald_smtp_smtp_retries_total") == 0


def test_retry_after_comes_from_the_reply_when_it_names_a_time(server_factory, service):
    server = server_factory()
    server.inject("mail", reply="450 4.7.1 Sending rate exceeded, try again in 120 seconds")
    response = send(service(server, smtp_retries=2), {"to": "a@example.com"})
    assert_error(response, 500, "send_failed", "rate exceeded")
    assert response.headers["Retry-After"] == "120"
    assert mail_commands(server) == 1


def test_a_421_with_a_rate_text_at_mail_is_not_replaced_by_a_quiet_reconnect(server_factory, service):
    # A 421 at MAIL FROM on a pooled connection is normally "idle too long": reconnect and go on. "Too many
    # messages" is not: a new session would only meet the same limit.
    server = server_factory()
    client = service(server, smtp_retries=2)
    assert send(client, {"to": "warm@example.com"}).status_code == 200
    server.inject("mail", reply="421 4.7.0 too many messages in this session, closing")
    response = send(client, {"to": "a@example.com"})
    assert_error(response, 500, "send_failed", "421 4.7.0 too many messages")
    assert "Retry-After" in response.headers
    assert mail_commands(server) == 2 and server.connections == 1


def test_greylisting_at_rcpt_is_still_retried_on_the_relay(server_factory, service):
    server = server_factory()
    server.inject("rcpt", reply="451 4.7.1 <a@example.com>: Recipient address rejected: Greylisted, try again later",
                  times=1)
    response = send(service(server, smtp_retries=2), {"to": "a@example.com"})
    assert response.status_code == 200
    assert mail_commands(server) == 2 and len(server.wait_for(1)) == 1


def test_a_rate_refusal_of_the_primary_moves_the_mail_to_the_fallback(server_factory, make_client):
    primary, fallback = server_factory(), server_factory()
    primary.inject("mail", reply=TOO_MUCH_MAIL)
    client = make_client(settings_from(chain_env(primary, url_of(fallback), SMTP_RETRIES="2")))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert mail_commands(primary) == 1 and primary.messages == []
    assert len(fallback.wait_for(1)) == 1


def test_when_every_relay_rate_limits_the_answer_is_the_last_ones_with_retry_after(server_factory, make_client):
    primary, fallback = server_factory(), server_factory()
    primary.inject("mail", reply=TOO_MUCH_MAIL)
    fallback.inject("rcpt", reply="450 4.7.1 rate limited, retry in 5 minutes")
    client = make_client(settings_from(chain_env(primary, url_of(fallback), SMTP_RETRIES="2")))
    response = send(client, {"to": "a@example.com"})
    body = assert_error(response, 500, "send_failed", "every SMTP relay failed")
    assert body["retryable"] is True and response.headers["Retry-After"] == "300"
    assert mail_commands(primary) == 1 and mail_commands(fallback) == 1


# --- the evidence and the Retry-After, reply by reply


@pytest.mark.parametrize("phase, code, reply, evidence", [
    (MAIL, 450, "4.7.1 Error: too much mail from 192.0.2.1", "rate"),
    (RCPT, 450, "4.7.1 Error: too many recipients from 192.0.2.1", "rate"),
    (RCPT, 450, "4.7.1 Client host rejected: cannot find your hostname", "rate"),  # a policy refusal of us
    (MAIL, 421, "4.7.0 too many messages, closing", "rate"),
    (MAIL, 451, "4.3.0 try later", "4xx"),
    (RCPT, 451, "4.7.1 greylisted, try again later", "4xx"),
    (RCPT, 450, "4.7.1 <a@example.com>: Recipient address rejected: Greylisted", "4xx"),
    (RCPT, 450, "4.2.0 mailbox busy", "4xx"),
    (RCPT, 450, "4.7.1 <noreply@herald.test>: Sender address rejected: try again later", "4xx_sender"),
    ("connect", 421, "4.7.0 too many connections, closing", "421"),  # not a session that collects errors
    (MAIL, 421, "4.4.2 idle too long, closing", "421"),
    (MAIL, 550, "5.7.1 sender not allowed", "5xx"),
])
def test_which_refusals_are_rate_or_policy_refusals(phase, code, reply, evidence):
    assert evidence_of(SmtpFailure(phase, f"{code} {reply}", code, reply=reply)) == evidence


@pytest.mark.parametrize("reply, seconds", [
    ("4.7.1 Error: too much mail from 192.0.2.1", None),
    ("4.7.1 try again in 45 seconds", 45),
    ("4.7.1 rate limited, retry after 30s", 30),
    ("4.7.1 rate limited, retry in 2 minutes", 120),
    ("4.7.1 quota exceeded, retry in 9 hours", 3600),  # capped: no answer tells a caller to wait longer
    ("4.7.1 rate limited, wait 0 seconds", 1),
])
def test_retry_after_in_the_reply_text(reply, seconds):
    assert retry_after_in(reply) == seconds
