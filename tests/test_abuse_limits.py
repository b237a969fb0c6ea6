"""Abuse limits: RATE_LIMIT_PER_RECIPIENT, RATE_LIMIT_GLOBAL and ALLOWED_RECIPIENT_DOMAINS.

Real parts only: the real Redis (and one on a unix socket), the real SMTP test server, two app instances on one
Redis for two replicas, and a real two-worker gunicorn.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from herald_smtp.addresses import parse_address
from herald_smtp.config import settings_from
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.sending.abuse import recipient_id
from herald_smtp.web.services import EXTENSION
from tests.support.client import assert_error, post, send, smtp_env
from tests.support.herald_process import HeraldProcess
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import UnixRedis


def samples(text: str, name: str, **labels) -> float:
    """The sum of the samples of `name` with these labels in a Prometheus text exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric(client, name: str, **labels) -> float:
    return samples(client.get("/metrics").get_data(as_text=True), name, **labels)


def store_of(client):
    return client.application.extensions[EXTENSION].store


def retry_after(response) -> int:
    value = response.headers["Retry-After"]
    assert value.isdigit(), value
    return int(value)


def failures(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "send_failed"]


@pytest.fixture(params=["memory", "redis"])
def store_env(request) -> dict[str, str]:
    """The environment of either store: the in-process one, or the real Redis (flushed)."""
    if request.param == "memory":
        return {}
    request.getfixturevalue("redis_client")
    return {"REDIS_URL": request.getfixturevalue("redis_url")}


@pytest.fixture
def limited(smtp, make_client, store_env):
    """An app on the test's store with the given extra environment."""

    def build(**env):
        return make_client(settings_from(smtp_env(smtp) | store_env | {"IDEMPOTENCY_WAIT_SECONDS": "3"} | env))

    return build


# --- the per-recipient and the global limit


def test_per_recipient_limit_refuses_the_next_send_with_429_and_retry_after(limited, smtp, caplog):
    client = limited(RATE_LIMIT_PER_RECIPIENT="2/60s")
    assert [send(client, {"to": "a@example.com"}).status_code for _ in range(2)] == [200, 200]

    caplog.set_level(logging.WARNING, logger="herald_smtp")
    denied = send(client, {"to": "a@example.com"})

    body = assert_error(denied, 429, "rate_limited", "RATE_LIMIT_PER_RECIPIENT allows 2 mails per 60s")
    assert body["retryable"] is True
    assert 1 <= retry_after(denied) <= 60
    assert f"retry after {retry_after(denied)}s" in body["error_message"]
    assert send(client, {"to": "b@example.com"}).status_code == 200  # another recipient has its own limit
    assert [m.rcpt_tos for m in smtp.messages] == [["a@example.com"], ["a@example.com"], ["b@example.com"]]
    [line] = failures(caplog)
    assert (line.error_code, line.outcome) == ("rate_limited", "rate_limited")
    assert "RATE_LIMIT_PER_RECIPIENT" in line.errmsg and line.limit == "RATE_LIMIT_PER_RECIPIENT"
    assert metric(client, "herald_smtp_rate_limited_total", limit="per_recipient") == 1
    assert metric(client, "herald_smtp_rate_limited_total", limit="global") == 0
    assert metric(client, "herald_smtp_requests_total", status="429", error_code="rate_limited") == 1


def test_one_recipient_whatever_the_case_of_its_address(limited, smtp):
    client = limited(RATE_LIMIT_PER_RECIPIENT="1/minute")  # limits' own notation
    assert send(client, {"to": "A@Example.com"}).status_code == 200
    assert_error(send(client, {"to": "a@example.COM"}), 429, "rate_limited")
    assert len(smtp.messages) == 1


def test_global_limit_counts_every_recipient(limited, smtp, caplog):
    client = limited(RATE_LIMIT_GLOBAL="2/60s", RATE_LIMIT_PER_RECIPIENT="5/60s")
    assert [send(client, {"to": f"{n}@example.com"}).status_code for n in "ab"] == [200, 200]

    caplog.set_level(logging.WARNING, logger="herald_smtp")
    denied = send(client, {"to": "c@example.com"})

    assert_error(denied, 429, "rate_limited", "RATE_LIMIT_GLOBAL allows 2 mails per 60s for the whole service")
    assert 1 <= retry_after(denied) <= 60
    assert len(smtp.messages) == 2
    [line] = failures(caplog)
    assert line.error_code == "rate_limited" and line.limit == "RATE_LIMIT_GLOBAL"
    assert "RATE_LIMIT_GLOBAL" in line.errmsg
    assert metric(client, "herald_smtp_rate_limited_total", limit="global") == 1
    assert metric(client, "herald_smtp_rate_limited_total", limit="per_recipient") == 0


def test_a_full_global_limit_takes_no_recipient_slot(limited, smtp):
    client = limited(RATE_LIMIT_GLOBAL="1/2s", RATE_LIMIT_PER_RECIPIENT="1/60s")
    first = send(client, {"to": "a@example.com"})
    assert first.status_code == 200
    denied = send(client, {"to": "b@example.com"})
    assert_error(denied, 429, "rate_limited", "RATE_LIMIT_GLOBAL")

    time.sleep(retry_after(denied))  # the global window lets the next one through

    # b's own limit (1/60s) was not used up by the global refusal.
    assert send(client, {"to": "b@example.com"}).status_code == 200
    assert [m.rcpt_tos for m in smtp.messages] == [["a@example.com"], ["b@example.com"]]


# --- idempotency: replays are free, a denial releases the key


def test_replays_of_a_finished_key_are_not_counted(limited, smtp):
    client = limited(RATE_LIMIT_PER_RECIPIENT="2/60s")
    payload = {"to": "a@example.com", "idempotency_key": "k-replayed"}
    answers = [send(client, payload) for _ in range(3)]  # N + 1 with a limit of N

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers.get("Idempotent-Replayed") for a in answers] == [None, "true", "true"]
    # Only the first took a slot: one more key sends, the one after is over the limit.
    assert send(client, {"to": "a@example.com", "idempotency_key": "k-second"}).status_code == 200
    assert_error(send(client, {"to": "a@example.com", "idempotency_key": "k-third"}), 429, "rate_limited")
    assert len(smtp.messages) == 2


def test_a_denied_request_releases_its_key_and_sends_after_retry_after(limited, smtp):
    client = limited(RATE_LIMIT_PER_RECIPIENT="1/1s")
    payload = {"to": "a@example.com", "idempotency_key": "k-denied"}
    assert send(client, {"to": "a@example.com"}).status_code == 200

    denied = send(client, payload)

    assert_error(denied, 429, "rate_limited")
    assert retry_after(denied) == 1
    assert store_of(client).get("k-denied") is None  # released, not kept
    again = send(client, payload)  # a fresh decision, not a replay of the 429
    assert again.status_code == 429 and "Idempotent-Replayed" not in again.headers
    assert len(smtp.messages) == 1

    time.sleep(retry_after(again))
    sent = send(client, payload)

    assert sent.status_code == 200 and "Idempotent-Replayed" not in sent.headers
    assert [m.rcpt_tos for m in smtp.messages] == [["a@example.com"], ["a@example.com"]]
    assert store_of(client).get("k-denied").done


# --- shared by replicas and workers


def test_two_replicas_on_one_redis_share_both_limits(smtp, make_client, redis_client, redis_url):
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "RATE_LIMIT_PER_RECIPIENT": "2/60s", "RATE_LIMIT_GLOBAL": "3/60s"}
    first, second = make_client(settings_from(env)), make_client(settings_from(env))

    assert send(first, {"to": "a@example.com"}).status_code == 200
    assert send(second, {"to": "A@example.com"}).status_code == 200
    assert_error(send(first, {"to": "a@example.com"}), 429, "rate_limited", "RATE_LIMIT_PER_RECIPIENT")
    assert send(second, {"to": "b@example.com"}).status_code == 200
    assert_error(send(first, {"to": "c@example.com"}), 429, "rate_limited", "RATE_LIMIT_GLOBAL")

    assert len(smtp.messages) == 3


@pytest.mark.timeout(120)
def test_two_gunicorn_workers_share_the_limit(tmp_path, smtp, redis_client, redis_url):
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "2", "WEB_THREADS": "4",
                            "RATE_LIMIT_PER_RECIPIENT": "3/60s"}
    answers = []
    with HeraldProcess(tmp_path, env) as service:
        threads = [threading.Thread(target=lambda: answers.append(post(service.url, {"to": "a@example.com"})))
                   for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        scrapes = [urlopen_text(service.url + "/metrics") for _ in range(4)]  # whichever worker answers
        pids = set(re.findall(r"Booting worker with pid: (\d+)", service.log_text()))

    assert len(pids) == 2
    assert Counter(status for status, _, _ in answers) == {200: 3, 429: 7}
    for status, body, headers in answers:
        if status == 429:
            assert body["error_code"] == "rate_limited"
            assert 1 <= int(headers["Retry-After"]) <= 60
    assert len(smtp.wait_for(3)) == 3
    for text in scrapes:
        assert samples(text, "herald_smtp_rate_limited_total", limit="per_recipient") == 7


def urlopen_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


# --- what Redis holds


def test_redis_keys_share_the_prefix_and_hold_no_address(smtp, make_client, redis_client, redis_url):
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "hs-test:", "IDEMPOTENCY_SECRET": "s1",
                            "RATE_LIMIT_PER_RECIPIENT": "5/minute", "RATE_LIMIT_GLOBAL": "100/60s"}
    client = make_client(settings_from(env))
    assert send(client, {"to": "Alice.Liddell@Example.com"}).status_code == 200

    # The message status record (sending/status.py) holds the recipient masked; the rate limits' keys none of it.
    keys = sorted(k.decode() for k in redis_client.keys("*") if not k.startswith(b"hs-test:message:"))
    [status] = redis_client.keys("hs-test:message:*")
    assert b"Alice" not in redis_client.get(status) and b"A***@Example.com" in redis_client.get(status)
    hashed = recipient_id(parse_address("alice.liddell@example.com"), "s1")
    assert keys == ["hs-test:ratelimit:global/100/60/second", f"hs-test:ratelimit:per_recipient/{hashed}/5/60/second"]
    stored = b" ".join(b" ".join(redis_client.lrange(k, 0, -1)) for k in keys) + " ".join(keys).encode()
    assert b"alice" not in stored.lower() and b"example" not in stored.lower()
    # Keyed by the secret: without it, whoever reads Redis could hash a known address and find its key.
    assert hashed != recipient_id(parse_address("alice.liddell@example.com"), "s2")
    assert hashed != recipient_id(parse_address("alice.liddell@example.com"), "")


def test_a_unix_socket_redis_url_holds_the_limit(smtp, make_client):
    with UnixRedis() as server:
        env = smtp_env(smtp) | {"REDIS_URL": server.url, "RATE_LIMIT_PER_RECIPIENT": "1/60s"}
        client = make_client(settings_from(env))
        assert send(client, {"to": "a@example.com", "idempotency_key": "k-unix"}).status_code == 200
        assert_error(send(client, {"to": "a@example.com"}), 429, "rate_limited")
        with server.client() as redis_client:
            keys = set(redis_client.keys("*"))
        assert "herald-smtp:idempotency:k-unix" in keys
        assert any(k.startswith("herald-smtp:ratelimit:per_recipient/") for k in keys)
    assert len(smtp.messages) == 1


# --- when the limiter's Redis fails: IDEMPOTENCY_FAILURE_MODE


@pytest.fixture
def doomed_redis(tmp_path):
    with RedisServer(tmp_path) as server:
        yield server


def test_limiter_store_down_in_open_mode_sends_and_logs(smtp, make_client, doomed_redis, caplog):
    env = smtp_env(smtp) | {"REDIS_URL": doomed_redis.url, "RATE_LIMIT_PER_RECIPIENT": "1/60s"}
    client = make_client(settings_from(env))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    doomed_redis.stop()

    caplog.set_level(logging.ERROR, logger="herald_smtp")
    response = send(client, {"to": "a@example.com"})  # over the limit, but nobody can tell

    assert response.status_code == 200
    assert len(smtp.wait_for(2)) == 2
    [line] = [r for r in caplog.records if r.getMessage().startswith("rate limit store unavailable")]
    assert line.getMessage() == ("rate limit store unavailable; sending without rate limits "
                                 "(IDEMPOTENCY_FAILURE_MODE=open)")
    assert "ConnectionError" in line.cause
    assert metric(client, "herald_smtp_rate_limit_store_errors_total") == 1


def test_limiter_store_down_in_closed_mode_is_503_and_releases_the_key(smtp, make_client, doomed_redis, caplog):
    env = smtp_env(smtp) | {"REDIS_URL": doomed_redis.url, "IDEMPOTENCY_FAILURE_MODE": "closed",
                            "RATE_LIMIT_GLOBAL": "10/60s"}
    store = MemoryStore()  # the idempotency records stay up: only the limiter fails
    client = make_client(settings_from(env), store=store)
    payload = {"to": "a@example.com", "idempotency_key": "k-closed-limit"}
    doomed_redis.stop()

    caplog.set_level(logging.ERROR, logger="herald_smtp")
    response = send(client, payload)

    body = assert_error(response, 503, "provider_down", "rate limit store (Redis) unavailable")
    assert body["retryable"] is True and retry_after(response) >= 1
    assert "not sending (closed mode)" in body["error_message"]
    assert smtp.messages == []
    assert store.get("k-closed-limit") is None
    assert ("rate limit store unavailable; refusing to send (IDEMPOTENCY_FAILURE_MODE=closed)"
            in caplog.messages)
    assert metric(client, "herald_smtp_rate_limit_store_errors_total") == 1

    doomed_redis.start()  # it recovers without a restart, and the same key sends
    assert send(client, payload).status_code == 200
    assert len(smtp.wait_for(1)) == 1


# --- the recipient allowlist


def test_allowlist_sends_to_listed_domains_in_any_case_and_refuses_others(limited, smtp, caplog):
    client = limited(ALLOWED_RECIPIENT_DOMAINS="example.com, Example.ORG")
    assert send(client, {"to": "a@EXAMPLE.com"}).status_code == 200
    assert send(client, {"to": "b@example.org"}).status_code == 200

    caplog.set_level(logging.WARNING, logger="herald_smtp")
    for refused in ("c@example.net", "d@mail.example.com"):  # exact domains: a subdomain is another domain
        domain = refused.partition("@")[2]
        body = assert_error(send(client, {"to": refused}), 400, "invalid_destination",
                            f"recipient domain {domain} is not allowed")
        assert "only to example.com, example.org (ALLOWED_RECIPIENT_DOMAINS)" in body["error_message"]
        assert body["retryable"] is False

    assert [m.rcpt_tos for m in smtp.messages] == [["a@EXAMPLE.com"], ["b@example.org"]]
    assert [r.error_code for r in failures(caplog)] == ["invalid_destination"] * 2
    assert "c***@example.net" in [r.to for r in failures(caplog)]


def test_a_refused_domain_records_nothing_and_takes_no_slot(limited, smtp):
    client = limited(ALLOWED_RECIPIENT_DOMAINS="example.com", RATE_LIMIT_GLOBAL="1/60s")
    payload = {"to": "x@example.net", "idempotency_key": "k-refused-domain"}
    assert_error(send(client, payload), 400, "invalid_destination", "ALLOWED_RECIPIENT_DOMAINS")
    assert store_of(client).get("k-refused-domain") is None

    assert send(client, {"to": "a@example.com"}).status_code == 200  # the global slot was still free
    assert len(smtp.messages) == 1


def test_without_limits_nothing_is_counted(smtp, make_client, redis_client, redis_url):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": redis_url}))
    assert [send(client, {"to": "a@example.com"}).status_code for _ in range(3)] == [200] * 3
    assert not [k for k in redis_client.keys("*") if b"ratelimit" in k]


def test_startup_says_what_the_limits_cannot_protect(caplog):
    from herald_smtp.logs import log_startup

    caplog.set_level(logging.WARNING, logger="herald_smtp")
    log_startup(settings_from({"REDIS_URL": "redis://127.0.0.1:6379/0", "RATE_LIMIT_PER_RECIPIENT": "5/60s"}))
    log_startup(settings_from({"RATE_LIMIT_GLOBAL": "100/60s"}))

    assert any("IDEMPOTENCY_SECRET is empty" in m and "rate limit keys are plain SHA-256 hashes of the addresses" in m
               for m in caplog.messages)
    assert any("not shared between workers or replicas" in m and "the rate limits count per replica" in m
               for m in caplog.messages)
