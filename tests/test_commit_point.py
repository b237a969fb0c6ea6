"""The commit point: from just before the final dot, no crash or store failure can send a key twice.

Real Redis and SMTP servers throughout; the crash test kills a real gunicorn worker.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from herald_smtp.config import settings_from
from herald_smtp.idempotency.base import Record
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.idempotency.redis import RedisStore
from tests.support.client import assert_error, fingerprint_of, post, send, smtp_env, with_changes
from tests.support.herald_process import HeraldProcess
from tests.support.redis_server import RedisServer

KEY_PREFIX = "herald-smtp:idempotency:"


@pytest.fixture(params=["memory", "redis"])
def store(request, redis_client):
    return MemoryStore() if request.param == "memory" else RedisStore(redis_client, "herald-smtp:")


def committed(store, key: str, payload: dict, hold_until: float):
    """A key as a worker leaves it when it dies waiting for the reply to its final dot."""
    fingerprint = fingerprint_of(payload)
    claim = store.reserve(key, fingerprint, 60)
    return store.commit(claim, Record(fingerprint, committing=True, hold_until=hold_until), 300)


# --- the store contract


def test_commit_keeps_a_committing_record_that_only_its_owner_can_finish(store):
    claim = store.reserve("k", "fp", 0.5)
    committed_claim = store.commit(claim, Record("fp", committing=True, hold_until=123.0), 300)
    assert committed_claim is not None and committed_claim.owned
    record = store.get("k")
    assert record.committing and record.hold_until == 123.0 and not record.done
    assert not store.reserve("k", "fp", 0.5).owned
    assert store.finish(committed_claim, Record("fp", 200, {"ok": True}), 300)
    assert store.get("k") == Record("fp", 200, {"ok": True})


def test_a_taken_over_reservation_cannot_commit(store):
    old = store.reserve("k", "fp", 0.2)
    store.release(old)
    newer = store.reserve("k", "fp", 30)
    assert store.commit(old, Record("fp", committing=True, hold_until=1.0), 300) is None
    assert store.get("k") == Record("fp")  # still the newer owner's reservation
    assert newer.owned


def test_the_committing_record_outlives_the_reservation_hold(redis_client):
    store = RedisStore(redis_client, "herald-smtp:")
    claim = store.reserve("k", "fp", 1)
    store.commit(claim, Record("fp", committing=True, hold_until=1.0), 300)
    assert 290 < redis_client.ttl(KEY_PREFIX + "k") <= 300


# --- what a duplicate gets


def test_a_key_abandoned_at_its_commit_point_answers_unknown_and_is_never_sent(settings, make_client, smtp):
    store = MemoryStore()
    client = make_client(settings, store=store)
    payload = {"to": "a@example.com", "idempotency_key": "k-dead"}
    committed(store, "k-dead", payload, hold_until=time.time() - 1)

    for _ in range(2):
        body = assert_error(send(client, payload), 500, "send_failed", "outcome unknown")
        assert "may have been delivered" in body["error_message"] and body["retryable"] is False
    assert smtp.messages == [] and smtp.fault_hits["message"] == 0
    assert store.get("k-dead").committing  # the record stays: the key is never sent again


def test_a_committing_key_within_its_hold_is_in_flight(settings, make_client, smtp):
    store = MemoryStore()
    client = make_client(with_changes(settings, idempotency_wait_seconds=0.2), store=store)
    payload = {"to": "a@example.com", "idempotency_key": "k-busy"}
    committed(store, "k-busy", payload, hold_until=time.time() + 60)
    assert_error(send(client, payload), 409, "idempotency_conflict", "still in flight")
    assert smtp.messages == []


def test_a_waiting_duplicate_answers_unknown_as_soon_as_the_hold_passes(settings, make_client, smtp):
    store = MemoryStore()
    client = make_client(with_changes(settings, idempotency_wait_seconds=5), store=store)
    payload = {"to": "a@example.com", "idempotency_key": "k-expiring"}
    committed(store, "k-expiring", payload, hold_until=time.time() + 0.5)
    started = time.monotonic()
    assert_error(send(client, payload), 500, "send_failed", "outcome unknown")
    assert time.monotonic() - started < 3  # it stopped waiting at the hold, not after the whole wait


# --- the store fails at the commit point


@pytest.fixture
def doomed_redis(tmp_path):
    with RedisServer(tmp_path) as server:
        yield server


def stop_redis_during_rcpt(smtp, redis_server) -> threading.Thread:
    """The key gets reserved, then Redis dies while the server thinks about RCPT."""
    smtp.inject("rcpt", delay=0.6, times=1)
    killer = threading.Timer(0.3, redis_server.stop)
    killer.start()
    return killer


def test_closed_mode_stops_before_the_final_dot_when_the_commit_fails(smtp, make_client, doomed_redis):
    env = smtp_env(smtp) | {"REDIS_URL": doomed_redis.url, "IDEMPOTENCY_FAILURE_MODE": "closed"}
    client = make_client(settings_from(env))
    killer = stop_redis_during_rcpt(smtp, doomed_redis)
    response = send(client, {"to": "a@example.com", "idempotency_key": "k-commit-closed"})
    killer.join()
    assert_error(response, 503, "provider_down", "idempotency store")
    time.sleep(0.3)
    assert smtp.messages == [] and smtp.dropped == []  # the final dot never went out
    assert smtp.fault_hits["rcpt"] == 1  # it did get as far as the transaction


def test_open_mode_sends_when_the_commit_fails(smtp, make_client, doomed_redis, caplog):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": doomed_redis.url}))
    killer = stop_redis_during_rcpt(smtp, doomed_redis)
    assert send(client, {"to": "a@example.com", "idempotency_key": "k-commit-open"}).status_code == 200
    killer.join()
    assert len(smtp.wait_for(1)) == 1
    assert any("at the commit point; sending anyway" in m for m in caplog.messages)


def test_the_final_record_is_retried_when_the_store_hiccups(smtp, make_client, redis_client, redis_url):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": redis_url}))
    smtp.inject("message", delay=0.5, times=1)
    answer = {}
    sender = threading.Thread(target=lambda: answer.update(r=send(client, {"to": "a@example.com",
                                                                              "idempotency_key": "k-hiccup"})))
    sender.start()
    _wait_for_committing(redis_client, "k-hiccup")
    # Writes stall for 2.5 s: the first write of the final record times out (2 s), the retry gets through.
    redis_client.execute_command("CLIENT", "PAUSE", "2500", "WRITE")
    sender.join(timeout=15)
    assert answer["r"].status_code == 200
    record = json.loads(redis_client.get(KEY_PREFIX + "k-hiccup"))
    assert record["status"] == 200 and record["body"]["message_id"] == answer["r"].get_json()["message_id"]


def _wait_for_committing(redis_client, key: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = redis_client.get(KEY_PREFIX + key)
        if raw and json.loads(raw).get("committing"):
            return json.loads(raw)
        time.sleep(0.01)
    raise AssertionError(f"{key} never reached its commit point")


# --- a worker killed while the server holds back its reply to the final dot


@pytest.mark.timeout(120)
def test_a_worker_killed_after_the_final_dot_never_lets_its_key_send_again(tmp_path, smtp, redis_client, redis_url):
    smtp.inject("message", delay=30, times=1)  # the server holds back its 250
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "1", "SMTP_TIMEOUT_SECONDS": "3",
                            "IDEMPOTENCY_WAIT_SECONDS": "1"}
    payload = {"to": "a@example.com", "idempotency_key": "k-killed"}
    with HeraldProcess(tmp_path, env) as service:
        first = threading.Thread(target=lambda: _post_quietly(service.url, payload), daemon=True)
        first.start()
        record = _wait_for_committing(redis_client, "k-killed")
        time.sleep(0.2)  # the final dot is out: the server has the whole message
        [worker] = _children(service.pid)
        os.kill(worker, signal.SIGKILL)
        killed_at = time.time()

        answers = []
        while time.time() < killed_at + 60:
            status, body, _ = post(service.url, payload)
            answers.append((status, body.get("error_code")))
            if status == 500:
                break
            time.sleep(0.5)
    assert answers[-1] == (500, "send_failed"), answers
    assert "outcome unknown" in body["error_message"]
    assert time.time() >= record["hold_until"]  # unknown only once the owner's hold had passed
    assert {a for a in answers[:-1]} <= {(409, "idempotency_conflict")}  # before that: in flight, never sent
    assert smtp.fault_hits["message"] == 1  # one mail reached the end of DATA, and only one
    assert len(smtp.messages) + len(smtp.dropped) <= 1


def _post_quietly(url: str, payload: dict) -> None:
    try:
        post(url, payload)
    except OSError:
        pass  # its worker is killed mid-request: the connection drops


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(child) for child in fh.read().split()]


def test_an_owner_whose_reservation_was_taken_over_hangs_up_before_the_dot(settings, make_client, smtp):
    from tests.support.clock import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    client = make_client(settings, store=store)
    payload = {"to": "a@example.com", "idempotency_key": "k-stolen"}
    smtp.inject("rcpt", delay=0.5, times=1)

    def take_over():  # while the owner waits at RCPT: its hold runs out and another worker reserves the key
        clock.advance(3600)
        assert store.reserve("k-stolen", fingerprint_of(payload), 60).owned

    thief = threading.Timer(0.2, take_over)
    thief.start()
    response = send(client, payload)
    thief.join()
    assert_error(response, 409, "idempotency_conflict", "nothing was sent")
    time.sleep(0.3)
    assert smtp.messages == [] and smtp.dropped == []
    assert store.get("k-stolen") == Record(fingerprint_of(payload))  # the new owner's reservation, untouched
