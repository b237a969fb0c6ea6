"""The commit point at its edges: a commit that Redis ran but answered late, or whose reply was lost.

A real Redis behind tests/support/redis_proxy.py, which lets the chosen command through and then holds
back or drops its reply; a real SMTP server whose own count of final dots (mails it received, kept or
dropped) is the judge.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from herald_smtp.config import ConfigError, settings_from
from herald_smtp.idempotency.base import Record
from herald_smtp.idempotency.redis import RedisStore
from tests.support.client import assert_error, send, smtp_env
from tests.support.redis_proxy import RedisReplyProxy
from tests.test_commit_point import _wait_for_committing

KEY_PREFIX = "herald-smtp:idempotency:"
COMMIT = b'"committing":true'  # only the commit's arguments carry this


@pytest.fixture
def proxy(redis_url, redis_client):
    with RedisReplyProxy(redis_url) as proxy:
        yield proxy


def final_dots(smtp) -> int:
    """Mails whose final dot reached the server, accepted or not."""
    return len(smtp.messages) + len(smtp.dropped)


def service(make_client, smtp, proxy, **env):
    return make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": proxy.url} | env))


# --- bug 2: a commit that used up the budget


# Redis runs the commit and answers 1.8 s later (a success that took the budget), or only after redis-py's
# 2 s socket timeout (a failure, on which open mode would send the dot if any budget were left).
@pytest.mark.parametrize("mode, reply_delay", [("open", 1.8), ("closed", 1.8), ("open", 3.0)])
def test_a_commit_that_uses_up_the_budget_sends_no_dot_and_frees_the_key(make_client, smtp, proxy, redis_client,
                                                                          mode, reply_delay):
    client = service(make_client, smtp, proxy, IDEMPOTENCY_FAILURE_MODE=mode)
    smtp.inject("data", delay=0.5, times=1)  # the 354 comes after 0.5 s
    proxy.delay_reply(COMMIT, seconds=reply_delay)
    payload = {"to": "a@example.com", "idempotency_key": f"k-late-commit-{mode}-{reply_delay}", "timeout_seconds": 2}

    body = assert_error(send(client, payload), 500, "send_failed", "final dot was not sent")
    assert body["retryable"] is True and "outcome unknown" not in body["error_message"]
    assert proxy.fired == 1
    time.sleep(max(0.3, reply_delay - 2))  # past the late reply
    assert final_dots(smtp) == 0
    assert redis_client.get(KEY_PREFIX + payload["idempotency_key"]) is None  # released, committing or not

    retry = send(client, payload)
    assert retry.status_code == 200, retry.get_json()
    assert final_dots(smtp) == 1


def test_open_mode_sends_the_dot_when_a_failed_commit_leaves_budget(make_client, smtp, proxy, redis_client):
    client = service(make_client, smtp, proxy)
    proxy.delay_reply(COMMIT, seconds=3)  # longer than redis-py's 2 s socket timeout: StoreUnavailable
    payload = {"to": "a@example.com", "idempotency_key": "k-open-late", "timeout_seconds": 5}
    response = send(client, payload)
    assert response.status_code == 200, response.get_json()
    assert len(smtp.wait_for(1)) == 1
    record = json.loads(redis_client.get(KEY_PREFIX + "k-open-late"))
    assert record["status"] == 200  # finished with the one token, whichever record the failed commit left


# --- bug 3: closed mode, a commit that Redis ran but answered too late


def test_closed_mode_frees_a_key_whose_commit_ran_but_answered_too_late(make_client, smtp, proxy, redis_client):
    client = service(make_client, smtp, proxy, IDEMPOTENCY_FAILURE_MODE="closed")
    proxy.delay_reply(COMMIT, seconds=3)  # the commit runs; redis-py gives up on its reply after 2 s
    payload = {"to": "a@example.com", "idempotency_key": "k-closed-late"}

    assert_error(send(client, payload), 503, "provider_down", "nothing was transmitted")
    assert proxy.fired == 1
    time.sleep(1.5)  # the late reply has come and gone
    assert final_dots(smtp) == 0
    # The answer said nothing was sent and the key is free: the record must agree.
    assert redis_client.get(KEY_PREFIX + "k-closed-late") is None
    retry = send(client, payload)
    assert retry.status_code == 200, retry.get_json()
    assert final_dots(smtp) == 1


# --- redis-py's reconnect-and-retry re-runs a script that Redis already ran


@pytest.fixture
def store(proxy):
    return RedisStore.from_url(proxy.url, "herald-smtp:")


def test_a_retried_reserve_recognises_its_own_reservation(store, proxy):
    proxy.drop_reply(b"fp-reserve-retried")  # Redis runs the reserve, the connection drops before the reply
    claim = store.reserve("k-retried", "fp-reserve-retried", 30)
    assert proxy.fired == 1
    assert claim.owned  # not "someone else's reservation": ours, written by the first run
    assert store.get("k-retried") == Record("fp-reserve-retried")


def test_a_retried_commit_and_finish_recognise_their_own_write(store, proxy, redis_client):
    claim = store.reserve("k-retried", "fp", 30)
    proxy.drop_reply(COMMIT)
    committed = store.commit(claim, Record("fp", committing=True, hold_until=time.time() + 30), 300)
    assert proxy.fired == 1
    assert committed is not None  # not "lost"
    assert store.get("k-retried").committing

    proxy.drop_reply(b'"status":200')
    assert store.finish(committed, Record("fp", 200, {"ok": True}), 300)
    assert proxy.fired == 2
    assert store.get("k-retried") == Record("fp", 200, {"ok": True})


def test_release_frees_a_committing_record_with_the_reservations_token(store):
    claim = store.reserve("k-release", "fp", 30)
    committed = store.commit(claim, Record("fp", committing=True, hold_until=time.time() + 30), 300)
    assert committed is not None
    assert store.release(claim)  # the reservation's own claim: the token is the same
    assert store.get("k-release") is None


# --- bug 1: records that must outlive the protocol's hold


def test_a_ttl_shorter_than_the_protocol_needs_is_refused_at_startup(smtp):
    # SMTP_TIMEOUT_SECONDS=5: the hold is 5 + 1 + 5 s; a duplicate may wait 1 s more.
    env = smtp_env(smtp) | {"IDEMPOTENCY_WAIT_SECONDS": "1"}
    with pytest.raises(ConfigError) as refused:
        settings_from(env | {"IDEMPOTENCY_TTL_SECONDS": "2"})
    message = str(refused.value)
    assert message.startswith("IDEMPOTENCY_TTL_SECONDS: ") and "at least 12" in message
    assert settings_from(env | {"IDEMPOTENCY_TTL_SECONDS": "12"}).idempotency_ttl_seconds == 12


def test_at_the_shortest_ttl_a_duplicate_during_a_slow_final_dot_sends_nothing(make_client, smtp, redis_url,
                                                                                redis_client):
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "IDEMPOTENCY_WAIT_SECONDS": "1", "IDEMPOTENCY_TTL_SECONDS": "12"}
    client = make_client(settings_from(env))
    smtp.inject("message", delay=4, times=1)  # the server answers the final dot after 4 s
    payload = {"to": "a@example.com", "idempotency_key": "k-short-ttl"}
    first = {}
    sender = threading.Thread(target=lambda: first.update(r=send(client, payload)))
    sender.start()
    record = _wait_for_committing(redis_client, "k-short-ttl")
    time.sleep(2.5)  # past a 2 s TTL, well inside the owner's send
    # Even if the owner died now (SIGKILL), the record would stay until its hold has passed.
    assert redis_client.pttl(KEY_PREFIX + "k-short-ttl") / 1000 > record["hold_until"] - time.time()
    assert_error(send(client, payload), 409, "idempotency_conflict", "still in flight")
    sender.join(timeout=15)
    assert first["r"].status_code == 200
    replay = send(client, payload)
    assert replay.get_json()["message_id"] == first["r"].get_json()["message_id"]
    assert final_dots(smtp) == 1

