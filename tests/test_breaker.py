"""The circuit breaker: one failed request is one failure, and the cooldown grows while the relay stays down.

With the defaults (SMTP_RETRIES=2, threshold 5, cooldown 30 s) a one-second
relay restart used to mean thirty seconds of 503: two requests' attempts
opened the circuit and the first trial came 30 s later. The app tests run
against a real SMTP server that is stopped (connection refused) and started
again on the same port; the breaker's cooldown runs on the FakeClock.
"""

from __future__ import annotations

import logging

import pytest

from herald_smtp.config import settings_from
from herald_smtp.smtp.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from herald_smtp.web.services import EXTENSION
from tests.support.client import assert_error, send, smtp_env
from tests.support.clock import FakeClock
from tests.test_operations import metric


@pytest.fixture
def down(server_factory):
    """A relay that is down: a real SMTP server, stopped; start() brings it back on the same port."""
    server = server_factory()
    server.stop()
    return server


def client_for(make_client, clock, server, **env):
    return make_client(settings_from(smtp_env(server) | {k.upper(): str(v) for k, v in env.items()}), clock=clock)


def breaker_of(client):
    return client.application.extensions[EXTENSION].send.mailer.primary.breaker


def mail(n: int) -> dict:
    return {"to": f"user{n}@example.com"}


# --- (a) one request, one failure


def test_failed_requests_count_once_each_not_once_per_attempt(down, make_client, clock, caplog):
    caplog.set_level(logging.INFO, logger="herald_smtp.mailer")
    client = client_for(make_client, clock, down, smtp_retries=2, smtp_circuit_threshold=5)
    for n in range(4):  # 4 requests x 3 attempts: 12 connection failures, but 4 failed requests
        body = assert_error(send(client, mail(n)), 500, "send_failed", "connect")
        assert body["retryable"] is True
        assert breaker_of(client).state == CLOSED, f"request {n + 1} of 4 opened the circuit"
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "herald_smtp_smtp_retries_total") == 8  # every request really made its 3 attempts

    assert_error(send(client, mail(5)), 500, "send_failed", "connect")  # the 5th failed request opens it
    assert breaker_of(client).state == OPEN
    assert_error(send(client, mail(6)), 503, "provider_down", "circuit breaker is open")
    [opened] = [r for r in caplog.records if r.getMessage() == "smtp circuit open: failing fast"]
    assert opened.consecutive_failures == 5


def test_a_success_after_failed_attempts_in_one_request_counts_as_a_success(server_factory, make_client, clock):
    server = server_factory()
    server.inject("ehlo", reply="421 4.3.2 busy", times=2)  # two failed attempts, then the third sends
    client = client_for(make_client, clock, server, smtp_retries=2, smtp_circuit_threshold=2)
    assert send(client, mail(1)).status_code == 200
    server.close_connections()  # no pooled connection: the next request greets again
    server.inject("ehlo", reply="421 4.3.2 busy", times=3)
    assert_error(send(client, mail(2)), 500, "send_failed", "421")
    assert breaker_of(client).state == CLOSED  # one failed request since the success: below 2


# --- (b) the cooldown: 2 s, doubling while the relay stays down, capped, and short again once it closes


def test_the_cooldown_doubles_on_each_failed_trial_up_to_the_setting_and_resets_after_a_success(
        down, make_client, clock):
    client = client_for(make_client, clock, down, smtp_retries=0, smtp_circuit_threshold=1,
                        smtp_circuit_cooldown_seconds=10)
    assert_error(send(client, mail(0)), 500, "send_failed")  # opens the circuit
    for cooldown in (2, 4, 8, 10, 10):
        fast = send(client, mail(1))
        assert_error(fast, 503, "provider_down", "circuit breaker is open")
        assert fast.headers["Retry-After"] == str(cooldown)
        clock.advance(cooldown - 0.5)
        still = send(client, mail(1))
        assert_error(still, 503, "provider_down")  # not yet: the cooldown is the whole `cooldown`
        assert still.headers["Retry-After"] == "1"
        clock.advance(0.5)
        assert_error(send(client, mail(1)), 500, "send_failed", "connect")  # the trial: still down, reopens

    down.start()
    clock.advance(10)
    assert send(client, mail(2)).status_code == 200  # the trial succeeds: closed
    assert breaker_of(client).state == CLOSED
    down.stop()
    assert_error(send(client, mail(3)), 500, "send_failed")  # opens again: the first cooldown is short again
    fast = send(client, mail(4))
    assert_error(fast, 503, "provider_down")
    assert fast.headers["Retry-After"] == "2"


# --- (c) a relay back after a short outage gets the mail after the short first cooldown


def test_a_relay_back_after_a_restart_takes_the_first_send_after_the_short_cooldown(down, make_client, clock):
    client = client_for(make_client, clock, down)  # the defaults: 2 retries, threshold 5, cooldown 30 s
    for n in range(5):
        assert_error(send(client, mail(n)), 500, "send_failed", "connect")
    assert_error(send(client, mail(5)), 503, "provider_down")
    down.start()  # the restart is over
    clock.advance(2)
    response = send(client, mail(6))
    assert response.status_code == 200, response.get_json()
    assert [m.rcpt_tos for m in down.wait_for(1)] == [["user6@example.com"]]
    assert breaker_of(client).state == CLOSED


def test_a_half_open_trial_gets_its_retries_and_its_outcome_alone_decides(down, make_client, clock):
    client = client_for(make_client, clock, down, smtp_retries=2, smtp_circuit_threshold=1)
    assert_error(send(client, mail(0)), 500, "send_failed")
    clock.advance(2)
    # The trial: three attempts against the relay still down, one failure recorded: open again, for 4 s.
    assert_error(send(client, mail(1)), 500, "send_failed", "connect")
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "herald_smtp_smtp_retries_total") == 4
    fast = send(client, mail(2))
    assert_error(fast, 503, "provider_down")
    assert fast.headers["Retry-After"] == "4"


# --- the breaker alone, on the fake clock


def test_only_one_trial_at_a_time_and_a_late_request_from_before_the_opening_decides_nothing():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_seconds=30, clock=clock)
    early = breaker.allow()  # a long request that started while the circuit was closed
    failing = breaker.allow()
    breaker.record(failing, True)
    assert breaker.state == OPEN and breaker.allow() is None
    clock.advance(2)
    assert breaker.state == HALF_OPEN
    trial = breaker.allow()
    assert trial is not None and trial.trial and breaker.allow() is None
    breaker.record(early, False)  # the late success of the early request: the trial decides, not it
    assert breaker.allow() is None
    breaker.record(trial, True)
    assert breaker.state == OPEN and breaker.retry_after() == 4


def test_an_abandoned_trial_frees_the_way_for_the_next_one():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_seconds=30, clock=clock)
    breaker.record(breaker.allow(), True)
    clock.advance(2)
    breaker.abandon(breaker.allow())  # e.g. a bug of ours, or the commit point stopped the send
    assert breaker.state == HALF_OPEN
    trial = breaker.allow()
    assert trial is not None and trial.trial
    breaker.record(trial, False)
    assert breaker.state == CLOSED and breaker.cooldown == 2


def test_a_cooldown_setting_below_two_seconds_is_the_first_and_only_cooldown():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_seconds=0.5, clock=clock)
    breaker.record(breaker.allow(), True)
    assert breaker.cooldown == 0.5
    clock.advance(0.5)
    breaker.record(breaker.allow(), True)
    assert breaker.cooldown == 0.5


def test_states_are_strings_for_the_metric_and_readyz():
    assert [str(s) for s in (CLOSED, OPEN, HALF_OPEN)] == ["closed", "open", "half_open"]
    assert f"{HALF_OPEN}" == "half_open" and OPEN == "open"
