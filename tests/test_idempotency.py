"""Idempotency: the store contract on both stores, then the behaviour end to end."""

from __future__ import annotations

import threading
import time

import pytest

from herald_smtp.config import settings_from
from herald_smtp.idempotency.base import Record, StoreUnavailable
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.idempotency.redis import RedisStore
from tests.support.client import assert_error, fingerprint_of, send, smtp_env, with_changes
from tests.support.redis_server import RedisServer

# --- the store contract, the same for both implementations


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store(backend, clock, redis_client):
    if backend == "memory":
        return MemoryStore(clock=clock)
    return RedisStore(redis_client, "test:")


@pytest.fixture
def let_pass(backend, clock):
    """let_pass(seconds) for `store`: the fake clock for memory, a real sleep for Redis (its TTLs run on real time)."""
    return clock.advance if backend == "memory" else time.sleep


def test_first_reserve_owns_the_key_and_a_second_sees_it_in_flight(store):
    first = store.reserve("k", "fp1", 30)
    second = store.reserve("k", "fp1", 30)

    assert first.owned and not second.owned
    assert second.existing == Record("fp1")
    assert not second.existing.done


def test_finish_stores_the_final_record(store):
    claim = store.reserve("k", "fp", 30)
    assert store.finish(claim, Record("fp", 200, {"ok": True, "message_id": "m1"}), 60)

    record = store.get("k")
    assert record.done and record.status == 200 and record.body["message_id"] == "m1"
    later = store.reserve("k", "fp", 30)
    assert not later.owned and later.existing == record


def test_release_frees_the_key(store):
    claim = store.reserve("k", "fp", 30)
    assert store.release(claim)
    assert store.get("k") is None
    assert store.reserve("k", "fp", 30).owned


def test_an_expired_reservation_cannot_overwrite_or_delete_the_newer_one(store, let_pass):
    old = store.reserve("k", "fp", 0.2)
    let_pass(0.4)
    new = store.reserve("k", "fp", 30)
    assert new.owned

    assert not store.finish(old, Record("fp", 500, {"ok": False}), 60)
    assert not store.release(old)
    assert store.get("k") == Record("fp")  # still the new owner's reservation
    assert store.finish(new, Record("fp", 200, {"ok": True}), 60)


def test_final_record_expires_after_the_ttl(store, let_pass):
    claim = store.reserve("k", "fp", 30)
    store.finish(claim, Record("fp", 200, {"ok": True}), 1)
    assert store.get("k") is not None
    let_pass(1.3)
    assert store.get("k") is None


def test_redis_final_record_is_written_with_a_ttl(redis_client):
    store = RedisStore(redis_client, "test:")
    claim = store.reserve("k", "fp", 30)
    store.finish(claim, Record("fp", 200, {"ok": True}), 300)
    assert 290 <= redis_client.ttl("test:idempotency:k") <= 300


def test_a_redis_that_lost_its_scripts_gets_them_again(redis_client):
    # A restarted or failed-over Redis has no scripts: EVALSHA answers NOSCRIPT, and each script is loaded again.
    store = RedisStore(redis_client, "test:")
    store.release(store.reserve("before", "fp", 30))
    redis_client.script_flush()
    claim = store.reserve("k", "fp", 30, suppression="someone")
    assert store.commit(claim, Record("fp"), 300) is claim
    store.finish(claim, Record("fp", 200, {"ok": True}), 300)
    assert store.get("k").status == 200
    assert store.release(store.reserve("other", "fp", 30)) is True

def test_concurrent_reserves_have_exactly_one_winner(store):
    results, barrier = [], threading.Barrier(16)

    def contend():
        barrier.wait()
        results.append(store.reserve("hot", "fp", 30).owned)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


# --- behaviour through /v1/send, on both stores


@pytest.fixture(params=["memory", "redis"])
def idem_client(request, settings, make_client, redis_client, redis_url):
    if request.param == "redis":
        settings = with_changes(settings, redis_url=redis_url)
    return make_client(settings)


def test_replay_returns_the_same_message_id_and_sends_once(idem_client, smtp):
    payload = {"to": "a@example.com", "params": {"code": "111111"}}
    first = send(idem_client, payload, {"Idempotency-Key": "replay-1"})
    second = send(idem_client, payload | {"idempotency_key": "replay-1"})

    assert first.status_code == second.status_code == 200
    assert second.get_json()["message_id"] == first.get_json()["message_id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    time.sleep(0.2)
    assert len(smtp.messages) == 1


def test_same_key_with_another_payload_is_409_and_sends_nothing(idem_client, smtp):
    send(idem_client, {"to": "a@example.com", "params": {"code": "1"}}, {"Idempotency-Key": "k-mismatch"})
    smtp.wait_for(1)
    response = send(idem_client, {"to": "a@example.com", "params": {"code": "2"}}, {"Idempotency-Key": "k-mismatch"})

    assert_error(response, 409, "idempotency_conflict", "different payload")
    time.sleep(0.2)
    assert len(smtp.messages) == 1


def test_transient_failure_releases_the_key_so_a_retry_really_sends(idem_client, smtp):
    payload = {"to": "a@example.com", "idempotency_key": "k-transient"}
    smtp.inject("rcpt", reply="451 4.3.0 try later")
    assert_error(send(idem_client, payload), 500, "send_failed", "451")
    assert smtp.messages == []

    smtp.reset_faults()
    retry = send(idem_client, payload)
    assert retry.status_code == 200
    assert "Idempotent-Replayed" not in retry.headers
    assert len(smtp.wait_for(1)) == 1


def test_permanent_failure_is_kept_and_replayed(idem_client, smtp):
    payload = {"to": "gone@example.com", "idempotency_key": "k-permanent"}
    smtp.reject_rcpt = {"gone@example.com"}
    first = send(idem_client, payload)
    assert_error(first, 400, "invalid_destination", "550")

    smtp.reset_faults()  # even if the server would now accept it, the outcome is kept
    second = send(idem_client, payload)
    assert second.status_code == 400
    assert second.get_json() == first.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert smtp.messages == []


def test_unknown_outcome_is_kept_and_never_resent(idem_client, smtp):
    payload = {"to": "a@example.com", "idempotency_key": "k-unknown"}
    smtp.inject("message", drop=True)
    assert_error(send(idem_client, payload), 500, "send_failed", "outcome unknown")

    smtp.reset_faults()
    again = send(idem_client, payload)
    assert again.status_code == 500 and again.headers["Idempotent-Replayed"] == "true"
    assert len(smtp.dropped) == 1 and smtp.messages == []


def test_duplicate_in_flight_waits_for_the_original_result(idem_client, smtp):
    smtp.inject("message", delay=0.5)
    payload = {"to": "a@example.com", "idempotency_key": "k-wait"}
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(send(idem_client, payload))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.get_json()["message_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 2
    assert len(smtp.messages) == 1


def test_still_in_flight_after_the_wait_is_409(settings, make_client, smtp):
    store = MemoryStore()
    client = make_client(with_changes(settings, idempotency_wait_seconds=0.3), store=store)
    payload = {"to": "a@example.com", "idempotency_key": "k-stuck"}
    # Another worker holds the key with the same payload and never finishes.
    fingerprint = fingerprint_of(payload)
    store.reserve("k-stuck", fingerprint, 60)

    assert_error(send(client, payload), 409, "idempotency_conflict", "still in flight")
    assert smtp.messages == []




# --- Redis unreachable


@pytest.fixture
def doomed_redis(tmp_path):
    with RedisServer(tmp_path) as server:
        yield server


def test_redis_down_in_open_mode_still_sends(smtp, make_client, doomed_redis, caplog):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": doomed_redis.url}))
    assert send(client, {"to": "a@example.com", "idempotency_key": "k-open"}).status_code == 200
    doomed_redis.stop()

    response = send(client, {"to": "b@example.com", "idempotency_key": "k-open-2"})
    assert response.status_code == 200
    assert [m.rcpt_tos for m in smtp.wait_for(2)] == [["a@example.com"], ["b@example.com"]]
    assert ("idempotency store unavailable; sending without idempotency (IDEMPOTENCY_FAILURE_MODE=open)"
            in caplog.messages)


def test_redis_down_in_closed_mode_is_503_naming_the_store(smtp, make_client, doomed_redis):
    env = smtp_env(smtp) | {"REDIS_URL": doomed_redis.url, "IDEMPOTENCY_FAILURE_MODE": "closed"}
    client = make_client(settings_from(env))
    doomed_redis.stop()

    response = send(client, {"to": "a@example.com", "idempotency_key": "k-closed"})
    assert_error(response, 503, "provider_down", "idempotency store")
    assert response.headers["Retry-After"]
    assert smtp.messages == []

    doomed_redis.start()  # and it recovers without a restart
    assert send(client, {"to": "a@example.com", "idempotency_key": "k-closed"}).status_code == 200


def test_redis_store_raises_store_unavailable_when_down(doomed_redis):
    store = RedisStore.from_url(doomed_redis.url, "p:")
    doomed_redis.stop()
    with pytest.raises(StoreUnavailable, match="Redis"):
        store.reserve("k", "fp", 1)


def test_4xx_after_the_final_dot_releases_the_key(idem_client, smtp):
    payload = {"to": "a@example.com", "idempotency_key": "k-451-data"}
    smtp.inject("message", reply="451 4.3.0 queue full", times=1)
    assert_error(send(idem_client, payload), 500, "send_failed", "451 4.3.0 queue full")
    retry = send(idem_client, payload)
    assert retry.status_code == 200 and "Idempotent-Replayed" not in retry.headers
    assert len(smtp.wait_for(1)) == 1


def test_5xx_after_the_final_dot_is_kept(idem_client, smtp):
    payload = {"to": "a@example.com", "idempotency_key": "k-554-data"}
    smtp.inject("message", reply="554 5.7.1 rejected as spam", times=1)
    first = send(idem_client, payload)
    assert_error(first, 500, "send_failed", "554")
    again = send(idem_client, payload)
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    assert smtp.messages == []


def test_a_waiter_takes_over_when_the_first_request_releases_the_key(settings, make_client, smtp):
    client = make_client(with_changes(settings, smtp_retries=0))
    payload = {"to": "a@example.com", "idempotency_key": "k-takeover"}
    smtp.inject("rcpt", reply="451 4.3.0 try later", delay=0.5, times=1)
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", send(client, payload)))
    first.start()
    time.sleep(0.2)  # the first request holds the key, stalled at RCPT
    second = send(client, payload)
    first.join()

    assert answers["first"].status_code == 500
    assert second.status_code == 200 and "Idempotent-Replayed" not in second.headers
    assert len(smtp.wait_for(1)) == 1


def test_store_failure_while_a_duplicate_waits_never_sends_twice(smtp, make_client, doomed_redis, caplog):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": doomed_redis.url}))
    payload = {"to": "a@example.com", "idempotency_key": "k-redis-dies"}
    smtp.inject("message", delay=1.0, times=1)
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", send(client, payload)))
    first.start()
    time.sleep(0.3)
    waiter = threading.Thread(target=lambda: answers.setdefault("waiter", send(client, payload)))
    waiter.start()
    time.sleep(0.2)
    doomed_redis.stop()  # while the first sends and the duplicate waits
    first.join()
    waiter.join()

    assert answers["first"].status_code == 200  # its mail went out; recording it failed, which is logged
    assert_error(answers["waiter"], 503, "provider_down", "not sending a duplicate")
    assert len(smtp.wait_for(1)) == 1
    time.sleep(0.2)
    assert len(smtp.messages) == 1
    assert "could not record the send outcome in the idempotency store" in caplog.messages


def test_a_bug_during_the_send_frees_the_key(settings, make_client, smtp):
    client = make_client(settings)
    service = client.application.extensions["herald_smtp"].send
    real_send = service.mailer.send

    # A stand-in for a bug in our own code: no real part can be made to fail this way.
    def broken_send(*args, **kwargs):
        raise RuntimeError("bug")

    service.mailer.send = broken_send
    payload = {"to": "a@example.com", "idempotency_key": "k-bug"}
    assert_error(send(client, payload), 500, "internal_error")
    service.mailer.send = real_send
    retry = send(client, payload)
    assert retry.status_code == 200 and "Idempotent-Replayed" not in retry.headers
    assert len(smtp.wait_for(1)) == 1


def test_a_forked_process_does_not_use_its_parent_s_redis_connection(redis_client):
    # Each thread keeps one connection (RedisStore._redis); a process forked after the store's first use (a
    # gunicorn worker) must open its own: on its parent's socket the two would read each other's replies.
    import os

    store = RedisStore(redis_client, "test:")
    store.release(store.reserve("parent", "fp", 30))
    pid = os.fork()
    if pid == 0:
        try:
            for round_ in range(200):
                assert store.reserve(f"child-{round_}", "fp", 30).token
            os._exit(0)
        except BaseException:
            os._exit(1)
    for round_ in range(200):
        claim = store.reserve(f"parent-{round_}", "fp", 30)
        assert claim.token and claim.existing is None
        assert store.release(claim) is True
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_client.exists("test:idempotency:child-199")
