"""One deadline for the whole exchange: DNS, TCP, TLS handshake, greeting and every read.

Herald's client may have no timeout of its own, so SMTP_TIMEOUT_SECONDS (or the
request's timeout_seconds) alone bounds how long its user waits. These servers
stall or trickle at the byte level (tests/support/slow_server.py).
"""

from __future__ import annotations

import ssl
import time

import pytest
import trustme

from herald_smtp.config import settings_from
from tests.support.client import assert_error, send
from tests.support.slow_server import SlowServer

# What a request may take beyond its budget: connection housekeeping (RSET/QUIT are capped
# at 1 s) and scheduling on a busy CI machine. Generous on purpose: the bug was 3x to 15x.
SLACK_SECONDS = 1.5


@pytest.fixture
def certificates(tmp_path):
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, str(ca_file)


def env_for(server: SlowServer, budget: float, **extra) -> dict[str, str]:
    return {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "noreply@herald.test",
            "SMTP_USE_STARTTLS": "false", "SMTP_TIMEOUT_SECONDS": str(budget), **extra}


def timed_send(client, body):
    started = time.monotonic()
    response = send(client, body)
    return response, time.monotonic() - started


def test_a_stalled_tls_handshake_and_then_a_stalled_banner_share_one_budget(make_client, certificates):
    server_tls, ca_file = certificates
    budget = 2.0
    # Each stall fits in the budget alone; together they do not.
    with SlowServer(tls=server_tls, handshake_delay=1.5, banner_delay=1.5) as server:
        env = env_for(server, budget, SMTP_USE_TLS="true", SMTP_TLS_CA_FILE=ca_file, SMTP_RETRIES="0")
        response, seconds = timed_send(make_client(settings_from(env)), {"to": "a@example.com"})
    assert_error(response, 500, "send_failed", "timed out")
    assert seconds < budget + SLACK_SECONDS, f"answered after {seconds:.1f}s with a {budget}s budget"


def test_a_greeting_trickled_one_byte_at_a_time_cannot_outlast_the_budget(make_client):
    budget = 1.0
    # 0.25 s per byte: every single read is well inside the budget, the whole banner is not.
    with SlowServer(banner=b"220 trickle.test ESMTP Postfix\r\n", trickle=0.25) as server:
        response, seconds = timed_send(make_client(settings_from(env_for(server, budget, SMTP_RETRIES="0"))),
                                       {"to": "a@example.com"})
    assert_error(response, 500, "send_failed")
    assert seconds < budget + SLACK_SECONDS, f"answered after {seconds:.1f}s with a {budget}s budget"


def test_retries_stay_inside_the_same_budget(make_client):
    budget = 2.0
    with SlowServer(banner_delay=0.9) as server:  # each attempt stalls at the greeting
        client = make_client(settings_from(env_for(server, budget, SMTP_RETRIES="5")))
        response, seconds = timed_send(client, {"to": "a@example.com"})
    assert_error(response, 500, "send_failed")
    assert seconds < budget + SLACK_SECONDS


def test_startup_warns_when_the_worst_case_answer_outlasts_herald_s_client(caplog):
    from herald_smtp.logs import log_startup

    warning = "client timeout, so Herald may report an error for a mail that was sent"
    with caplog.at_level("WARNING", logger="herald_smtp"):
        log_startup(settings_from({}))  # defaults: 10 s + 1 s + 10 s
    assert not [m for m in caplog.messages if warning in m]
    caplog.clear()
    with caplog.at_level("WARNING", logger="herald_smtp"):
        log_startup(settings_from({"SMTP_TIMEOUT_SECONDS": "25", "IDEMPOTENCY_WAIT_SECONDS": "10"}))
    [line] = [m for m in caplog.messages if warning in m]
    assert "36s" in line


def test_a_socket_timeout_is_re_armed_only_when_it_would_outlast_what_is_left_by_more_than_the_slack():
    import socket as sockets

    from herald_smtp.smtp.deadline import _REARM_SLACK, set_timeout

    first, second = sockets.socketpair()
    with first, second:
        set_timeout(first, 5.0)
        assert first.gettimeout() == 5.0
        set_timeout(first, 5.0 - _REARM_SLACK / 2)  # within the slack: kept (no system call)
        assert first.gettimeout() == 5.0
        set_timeout(first, 5.0 - 2 * _REARM_SLACK)  # a wait could outlast the deadline: re-armed
        assert first.gettimeout() == 5.0 - 2 * _REARM_SLACK
        first.settimeout(0)  # e.g. after a non-blocking look: a shorter timeout is never kept
        set_timeout(first, 1.0)
        assert first.gettimeout() == 1.0
        first.settimeout(None)
        set_timeout(first, 1.0)
        assert first.gettimeout() == 1.0
