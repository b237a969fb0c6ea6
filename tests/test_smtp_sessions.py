"""The SMTP session's edges: unreadable replies, AUTH that cannot or must not be tried twice, hang-ups.

Real servers throughout: aiosmtpd (tests/support/smtp_server.py) where it can
play the part, the scripted raw server (tests/support/scripted_server.py) for
replies aiosmtpd will not give (a 9,000-character line, AUTH GSSAPI only) and
to see every byte the client sent.
"""

from __future__ import annotations

import threading
import time

from herald_smtp.config import settings_from
from herald_smtp.idempotency.memory import MemoryStore
from tests.support.client import assert_error, fingerprint_of, send, smtp_env
from tests.support.clock import FakeClock
from tests.support.scripted_server import Reply, ScriptedServer

OVER_LONG = b"x" * 9000


def scripted_env(server: ScriptedServer, **extra) -> dict[str, str]:
    return {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "noreply@herald.test",
            "SMTP_USE_STARTTLS": "false", "SMTP_TIMEOUT_SECONDS": "5", **extra}


# --- bug 6: a reply line too long to read is not the server's verdict


def test_an_over_long_reply_to_rcpt_is_a_relay_failure_and_releases_the_key(make_client):
    # Read as the server's own 500, this was a recipient refusal: 400 invalid_destination, the key kept.
    with ScriptedServer(script={"rcpt": [b"550 5.1.1 " + OVER_LONG + b"\r\n"]}) as server:
        client = make_client(settings_from(scripted_env(server, SMTP_RETRIES="0")))
        payload = {"to": "a@example.com", "idempotency_key": "k-long-rcpt"}
        body = assert_error(send(client, payload), 500, "send_failed", "reply line longer than 8192 bytes")
        assert body["retryable"] is True
        assert server.messages == []
        assert send(client, payload).status_code == 200  # released: the retry really sends
        assert len(server.messages) == 1


def test_an_over_long_reply_to_the_final_dot_is_an_unknown_outcome_and_keeps_the_key(make_client):
    # "250 " and 9,000 characters: the server accepted the mail; read as a 500 it was a permanent failure.
    with ScriptedServer(script={"dot": [b"250 " + OVER_LONG + b"\r\n"]}) as server:
        client = make_client(settings_from(scripted_env(server, SMTP_RETRIES="2")))
        payload = {"to": "a@example.com", "idempotency_key": "k-long-dot"}
        body = assert_error(send(client, payload), 500, "send_failed", "outcome unknown")
        assert "reply line longer than 8192 bytes" in body["error_message"]
        assert body["retryable"] is False
        assert_error(send(client, payload), 500, "send_failed", "outcome unknown")  # kept: replayed
        assert len(server.messages) == 1
        assert len([c for c in server.commands if c.upper().startswith(b"MAIL")]) == 1


def test_an_over_long_reply_counts_for_the_circuit_breaker(make_client):
    with ScriptedServer(script={"mail": [b"250 " + OVER_LONG + b"\r\n"] * 2}) as server:
        client = make_client(settings_from(scripted_env(server, SMTP_RETRIES="0", SMTP_CIRCUIT_THRESHOLD="2")))
        for n in range(2):
            assert_error(send(client, {"to": f"a{n}@example.com"}), 500, "send_failed", "8192")
        assert_error(send(client, {"to": "b@example.com"}), 503, "provider_down", "circuit breaker is open")
        assert server.connections == 2


# --- bug 7: no AUTH mechanism in common is a setup error


def test_a_server_offering_only_gssapi_is_a_setup_error_tried_once(make_client):
    with ScriptedServer(extensions=("PIPELINING", "AUTH GSSAPI")) as server:
        env = scripted_env(server, SMTP_USER="u", SMTP_PASSWORD="p", SMTP_RETRIES="2", SMTP_CIRCUIT_THRESHOLD="2")
        client = make_client(settings_from(env))
        body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "server offers AUTH GSSAPI")
        assert "herald-smtp supports PLAIN, LOGIN" in body["error_message"]
        assert body["retryable"] is False
        assert server.connections == 1  # not retried
        assert not [c for c in server.commands if c.upper().startswith(b"AUTH")]  # nothing to try
        for n in range(3):  # past the threshold: never counted as the relay failing
            assert_error(send(client, {"to": f"b{n}@example.com"}), 500, "send_failed", "GSSAPI")
        assert server.connections == 4


# --- bug 11: one AUTH per connection; a 535 is the answer


def test_a_wrong_password_is_tried_once(server_factory, make_client):
    server = server_factory(auth=("u", "right"))  # offers AUTH LOGIN and PLAIN over plain text (tests only)
    env = smtp_env(server) | {"SMTP_PASSWORD": "wrong", "SMTP_RETRIES": "2"}
    body = assert_error(send(make_client(settings_from(env)), {"to": "a@example.com"}), 500, "send_failed", "535")
    assert body["retryable"] is False
    assert server.auth_attempts == 1 and server.auth_failures == 1
    assert "wrong" not in body["error_message"]


def test_a_right_password_still_logs_in(server_factory, make_client):
    server = server_factory(auth=("u", "right"))
    assert send(make_client(settings_from(smtp_env(server))), {"to": "a@example.com"}).status_code == 200
    assert server.auth_attempts == 1 and server.auth_failures == 0


def test_auth_offered_only_after_starttls_with_starttls_off_says_so(server_factory, make_client):
    server = server_factory(starttls=True, auth=("u", "p"))  # like Postfix's smtpd_tls_auth_only
    env = smtp_env(server) | {"SMTP_USE_STARTTLS": "false"}
    body = assert_error(send(make_client(settings_from(env)), {"to": "a@example.com"}), 500, "send_failed",
                        "the server offers AUTH only after STARTTLS; set SMTP_USE_STARTTLS=true")
    assert body["retryable"] is False
    assert server.auth_attempts == 0 and server.messages == []


# --- bug 8: hanging up costs the request nothing, and never sends QUIT inside DATA


def test_a_connection_retired_after_its_last_mail_is_not_waited_for(server_factory, make_client):
    server = server_factory()
    server.inject("quit", delay=2)  # a server slow to answer QUIT
    client = make_client(settings_from(smtp_env(server) | {"SMTP_MAX_MESSAGES_PER_CONNECTION": "1"}))
    started = time.monotonic()
    assert send(client, {"to": "a@example.com"}).status_code == 200
    # Waiting for the QUIT reply costs up to 1 s (the housekeeping cap); a send alone takes milliseconds.
    assert time.monotonic() - started < 0.8
    assert len(server.wait_for(1)) == 1


def test_a_connection_given_up_during_setup_is_not_waited_for(make_client):
    slow_quit = Reply(b"221 2.0.0 Bye\r\n", delay=2)
    with ScriptedServer(extensions=("AUTH GSSAPI",), script={"quit": [slow_quit]}) as server:
        client = make_client(settings_from(scripted_env(server, SMTP_USER="u", SMTP_PASSWORD="p")))
        started = time.monotonic()
        assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "GSSAPI")
        assert time.monotonic() - started < 0.8
        server.wait_closed()
        assert server.commands[-1].upper() == b"QUIT"  # outside DATA the QUIT is still sent


def test_a_hang_up_inside_data_sends_no_quit_and_nothing_is_stored(make_client):
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    payload = {"to": "a@example.com", "idempotency_key": "k-hang-up"}
    with ScriptedServer(script={"rcpt": [Reply(b"250 2.1.5 Ok\r\n", delay=0.5)]}) as server:
        client = make_client(settings_from(scripted_env(server)), store=store)

        def take_over():  # while the owner waits at RCPT, its hold runs out and another worker takes the key
            clock.advance(3600)
            assert store.reserve("k-hang-up", fingerprint_of(payload), 60).owned

        thief = threading.Timer(0.2, take_over)
        thief.start()
        started = time.monotonic()
        response = send(client, payload)
        seconds = time.monotonic() - started
        thief.join()
        assert_error(response, 409, "idempotency_conflict", "nothing was sent")
        server.wait_closed()
        [session] = server.received
        assert b"DATA\r\n" in session and b"Subject:" in session  # the message went, all but its final dot
        assert b"quit" not in session.lower()  # inside DATA, a QUIT would be a line of the message
        assert server.messages == []
        assert seconds < 0.5 + 0.8  # the RCPT stall, and no second waited for a QUIT reply
