"""SMTP PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write, and every failure point in the group.

Each behaviour test runs twice, against a real STARTTLS + AUTH server that offers PIPELINING and
one that does not: the answers, the phase named and what reaches the server must be the same.
"""

from __future__ import annotations

import logging
import socket

import pytest

from herald_smtp.config import settings_from
from tests.support.client import SMTP_PASSWORD, SMTP_USER, assert_error, send, smtp_env
from tests.support.smtp_server import SmtpTestServer

TO = "user@example.com"


@pytest.fixture(scope="module", params=[True, False], ids=["pipelining", "sequential"])
def relay(request, tmp_path_factory):
    with SmtpTestServer(starttls=True, auth=(SMTP_USER, SMTP_PASSWORD), pipelining=request.param,
                        certdir=tmp_path_factory.mktemp("certs")) as server:
        yield server


@pytest.fixture
def server(relay):
    relay.reset_faults()
    relay.clear()
    relay.connections = 0
    yield relay
    relay.reset_faults()


@pytest.fixture
def client(make_client, server):
    # One retry: a transient failure inside the group is retried once, on a new connection.
    return make_client(settings_from(smtp_env(server) | {"SMTP_RETRIES": "1"}))


def _verbs(server: SmtpTestServer) -> list[str]:
    return [verb for verb, _ in server.commands]


def _send_failed_line(caplog) -> logging.LogRecord:
    lines = [r for r in caplog.records if r.getMessage() == "send_failed"]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    return lines[0]


def test_the_envelope_goes_in_one_write_only_to_a_pipelining_server(client, server):
    assert send(client, {"to": TO}).status_code == 200
    assert send(client, {"to": TO}).status_code == 200
    assert len(server.wait_for(2)) == 2
    groups = server.pipelined_groups
    assert len(groups) == 2
    if server.pipelining:
        # What arrived with each MAIL: the RCPT and the DATA, nothing else (the content waits for the 354).
        assert groups == [f"RCPT TO:<{TO}>\r\nDATA\r\n".encode()] * 2
    else:
        assert groups == [b"", b""]
    assert server.connections == 1  # both on one pooled connection


def test_mail_refused_sends_no_content_resets_and_keeps_the_connection(client, server, caplog):
    server.inject("mail", reply="553 5.7.1 Sender address rejected: not owned by user", times=1)
    caplog.set_level(logging.INFO)
    assert_error(send(client, {"to": TO}), 500, "send_failed", "MAIL FROM:<noreply@herald.test> refused: 553")
    line = _send_failed_line(caplog)
    assert (line.phase, line.smtp_code) == ("mail", 553)
    assert server.messages == [] and server.dropped == []
    assert _verbs(server)[-1] == "RSET"
    # The session was reset, not dropped: the next mail goes on the same connection.
    assert send(client, {"to": TO}).status_code == 200
    assert len(server.wait_for(1)) == 1
    assert server.connections == 1


def test_recipient_refused_is_invalid_destination_and_no_content_is_sent(client, server, caplog):
    server.reject_rcpt = {TO}
    caplog.set_level(logging.INFO)
    assert_error(send(client, {"to": TO}), 400, "invalid_destination", "550")
    line = _send_failed_line(caplog)
    assert (line.phase, line.smtp_code) == ("rcpt", 550)
    assert server.messages == [] and server.dropped == []
    assert _verbs(server) == ["MAIL", "RCPT", "RSET"]  # one attempt: a refused recipient is not retried
    server.reject_rcpt = set()
    # A 5.1.1 suppresses the recipient (sending/suppression.py): answered at once, without SMTP.
    assert_error(send(client, {"to": TO}), 400, "invalid_destination", "suppressed since")
    assert _verbs(server) == ["MAIL", "RCPT", "RSET"]
    assert send(client, {"to": "other@example.com"}).status_code == 200
    assert server.connections == 1  # the session survived the refusal (RSET)


def test_transient_rcpt_reply_is_retried_and_the_mail_sent_once(client, server):
    server.inject("rcpt", reply="451 4.3.0 Try again later", times=1)
    assert send(client, {"to": TO}).status_code == 200
    assert len(server.wait_for(1)) == 1
    assert _verbs(server) == ["MAIL", "RCPT", "RSET", "MAIL", "RCPT"]
    assert server.fault_hits["rcpt"] == 1


def test_transient_rcpt_reply_on_every_attempt_names_rcpt(client, server, caplog):
    server.inject("rcpt", reply="452 4.2.2 Mailbox full")
    caplog.set_level(logging.INFO)
    body = assert_error(send(client, {"to": TO}), 500, "send_failed", "SMTP rcpt failed: RCPT TO refused: 452")
    assert body["retryable"] is True
    line = _send_failed_line(caplog)
    assert (line.phase, line.smtp_code) == ("rcpt", 452)
    assert server.messages == []
    assert _verbs(server).count("MAIL") == 2  # the first try and the one retry


def test_data_refused_names_data_and_sends_no_content(client, server, caplog):
    server.inject("data", reply="554 5.5.1 No valid recipients")
    caplog.set_level(logging.INFO)
    assert_error(send(client, {"to": TO}), 500, "send_failed", "DATA refused: 554")
    line = _send_failed_line(caplog)
    assert (line.phase, line.smtp_code) == ("data", 554)
    assert server.messages == [] and server.dropped == []


@pytest.mark.parametrize("phase", ["mail", "rcpt", "data"])
def test_connection_dropped_inside_the_group_is_retried_on_a_new_connection(client, server, phase):
    server.inject(phase, drop=True, times=1)
    assert send(client, {"to": TO}).status_code == 200
    assert len(server.wait_for(1)) == 1
    assert server.dropped == []
    assert server.connections == 2


def test_connection_dropped_after_the_final_dot_is_unknown_and_never_retried(client, server):
    server.inject("message", drop=True, times=1)
    assert_error(send(client, {"to": TO}), 500, "send_failed", "outcome unknown")
    assert len(server.dropped) == 1
    assert server.messages == []
    assert _verbs(server).count("MAIL") == 1


def test_dead_pooled_connection_is_replaced_without_a_retry(client, server):
    assert send(client, {"to": TO}).status_code == 200
    server.close_connections()  # the server hung up while the connection was idle in the pool
    server.inject("rcpt", reply="451 4.3.0 Try again later", times=1)
    # The dead connection is found at the first reply and replaced; the one retry is still there
    # for the 451 on the new connection, which RSET keeps.
    assert send(client, {"to": TO}).status_code == 200
    assert len(server.wait_for(2)) == 2
    assert server.connections == 2
    assert server.fault_hits["rcpt"] == 1


def test_421_at_mail_closes_the_session_and_the_mail_goes_on_a_new_one(client, server):
    assert send(client, {"to": TO}).status_code == 200
    server.inject("mail", reply="421 4.3.2 Service shutting down", times=1)
    assert send(client, {"to": TO}).status_code == 200
    assert len(server.wait_for(2)) == 2
    assert server.connections == 2


def test_a_354_after_a_refused_recipient_gets_no_content_and_the_session_is_dropped(client, server):
    # A broken server invites the content although it refused the only recipient. Nothing may follow
    # the invitation (not even RSET, which it would take as content): the connection is closed.
    server.reject_rcpt = {TO}
    server.data_reply_without_recipients = "354 End data with <CR><LF>.<CR><LF>"
    assert_error(send(client, {"to": TO}), 400, "invalid_destination", "550")
    assert server.messages == []
    server.reject_rcpt = set()
    assert send(client, {"to": "other@example.com"}).status_code == 200
    assert [m.rcpt_tos for m in server.wait_for(1)] == [["other@example.com"]]
    assert server.connections == (2 if server.pipelining else 1)


def test_smtp_sockets_send_small_writes_at_once(make_client, server):
    # The final dot is a 3-byte write of its own after the message: with Nagle's algorithm on, it
    # waits for the server's delayed ACK (40 ms a mail on Linux). TCP_NODELAY must be set on every
    # connection the pool opens (the TLS layer keeps the option of the socket beneath it).
    app_client = make_client(settings_from(smtp_env(server)))
    assert send(app_client, {"to": TO}).status_code == 200
    mailer = app_client.application.extensions["herald_smtp"].send.mailer
    idle = mailer.primary.pool._idle
    assert len(idle) == 1
    assert idle[0].conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
