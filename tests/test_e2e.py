"""End to end: herald-smtp under gunicorn, real Redis, real SMTP, concurrent duplicates, logs."""

from __future__ import annotations

import json
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor

import pytest
from urllib.parse import quote

from tests.support.client import API_KEY, SMTP_PASSWORD, post, smtp_env
from tests.support.herald_process import HeraldProcess


KEYS, DUPLICATES = 20, 10
FALLBACK_PASSWORD = "p@ss:w/rd%-fallback"


def fire_duplicates(url: str) -> dict[str, list[tuple[int, dict, bool]]]:
    """KEYS keys x DUPLICATES identical requests, all in flight at once."""
    jobs = [(f"key-{k}", {"to": f"user{k}@example.com", "params": {"code": f"C{k:04d}"}})
            for k in range(KEYS) for _ in range(DUPLICATES)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: post(url, job[1], {"Idempotency-Key": job[0]}), jobs))
    by_key: dict[str, list[tuple[int, dict, bool]]] = {}
    for (key, _), (status, body, headers) in zip(jobs, answers, strict=True):
        by_key.setdefault(key, []).append((status, body, headers.get("Idempotent-Replayed") == "true"))
    return by_key


def assert_one_mail_per_key(by_key, smtp):
    message_ids = set()
    for key, answers in by_key.items():
        assert [status for status, _, _ in answers] == [200] * DUPLICATES, (key, answers)
        assert sum(not replayed for _, _, replayed in answers) == 1, (key, answers)
        ids = {body["message_id"] for _, body, _ in answers}
        assert len(ids) == 1, (key, ids)
        message_ids |= ids
    assert len(message_ids) == KEYS
    mails = smtp.wait_for(KEYS)
    assert len(mails) == KEYS  # wait_for returns at least KEYS; exactly KEYS arrived
    assert {m.message["Message-ID"].strip("<>") for m in mails} == message_ids


@pytest.mark.timeout(180)
def test_duplicates_across_four_workers_on_redis_send_exactly_one_mail_per_key(tmp_path, smtp, redis_client,
                                                                            redis_url):
    smtp.inject("message", delay=0.2)  # keep the originals in flight while the duplicates arrive
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "4", "WEB_THREADS": "16"}
    with HeraldProcess(tmp_path, env) as service:
        by_key = fire_duplicates(service.url)
        log = service.log_text()
    assert log.count("Booting worker") == 4
    assert_one_mail_per_key(by_key, smtp)


@pytest.mark.timeout(180)
def test_duplicates_on_the_in_process_store_with_threads(tmp_path, smtp):
    smtp.inject("message", delay=0.2)
    env = smtp_env(smtp) | {"WEB_CONCURRENCY": "4", "WEB_THREADS": "16"}  # no REDIS_URL: one worker
    with HeraldProcess(tmp_path, env) as service:
        by_key = fire_duplicates(service.url)
        log = service.log_text()
    assert log.count("Booting worker") == 1
    assert_one_mail_per_key(by_key, smtp)


def test_logs_are_json_lines_with_the_operators_messages_and_no_secrets(tmp_path, smtp, server_factory):
    fallback = server_factory(implicit_tls=True, auth=("fallback-user", FALLBACK_PASSWORD))
    fallback_url = (f"smtps://fallback-user:{quote(FALLBACK_PASSWORD, safe='')}@{fallback.host}:{fallback.port}"
                    f"?ca_file={fallback.ca_file}")
    env = smtp_env(smtp) | {"API_KEY": f"{API_KEY},other-key", "LOG_LEVEL": "debug",
                            "SMTP_FALLBACK_URLS": fallback_url}
    codes = ["739104", "582044", "301958"]
    with HeraldProcess(tmp_path, env) as service:
        auth = {"X-API-Key": API_KEY, "X-Request-ID": "req-ok-1"}
        assert post(service.url, {"to": "alice@example.com", "params": {"code": codes[0]}}, auth)[0] == 200
        assert post(service.url, {"to": "alice@example.com", "params": {"code": codes[1]}},
                    {"X-API-Key": "bad"})[0] == 401
        smtp.inject("rcpt", reply="451 4.3.0 greylisted")
        assert post(service.url, {"to": "bob@example.com", "body": f"code {codes[1]}", "idempotency_key": "k1"},
                    auth)[0] == 500
        smtp.reset_faults()
        post(service.url, {"to": "bob@example.com", "body": f"code {codes[1]}", "idempotency_key": "k1"}, auth)
        post(service.url, {"to": "bob@example.com", "body": f"code {codes[1]}", "idempotency_key": "k1"}, auth)
        assert post(service.url, {"to": "x"}, auth)[0] == 400
        smtp.reject_rcpt = {"carol@example.com"}  # the 550 reply quotes the address
        assert post(service.url, {"to": "carol@example.com", "params": {"code": codes[0]}}, auth)[0] == 400
        smtp.inject("mail", reply="553 5.7.1 Sender address rejected: not owned by user", times=1)
        assert post(service.url, {"to": "dave@example.com", "body": f"code {codes[2]}"}, auth)[0] == 200
        assert len(fallback.wait_for(1)) == 1
    lines = [json.loads(line) for line in service.log_text().splitlines() if line.strip()]
    text = service.log_text()

    for line in lines:
        assert {"time", "level", "logger", "message", "service"} <= line.keys(), line
        assert line["service"] == "herald-smtp"
        assert datetime.fromisoformat(line["time"]).tzinfo is not None, line  # RFC 3339, with its zone
    messages = [line["message"] for line in lines]
    sent = next(line for line in lines if line["message"] == "send ok")
    assert sent["to"] == "a***@example.com" and sent["request_id"] == "req-ok-1"
    assert sent["message_id"] and sent["duration_ms"] >= 0
    failed = next(line for line in lines if line["message"] == "send_failed" and line.get("smtp_code"))
    assert failed["error_code"] == "send_failed" and failed["smtp_code"] == 451 and failed["phase"] == "rcpt"
    assert "greylisted" in failed["errmsg"] and failed["to"] == "b***@example.com"
    assert "send unauthorized: invalid or missing API key" in messages
    assert "send idempotent hit" in messages
    assert any(line["logger"] == "gunicorn.access" and line["request_id"] == "req-ok-1" for line in lines)
    assert any(line["message"] == "starting herald-smtp" and line["config"]["api_keys"] == "set" for line in lines)
    rejected = next(line for line in lines if line["message"] == "send_failed" and line.get("smtp_code") == 550)
    assert rejected["error_code"] == "invalid_destination" and "c***@example.com" in rejected["errmsg"]
    primary, second = f"127.0.0.1:{smtp.port}", f"127.0.0.1:{fallback.port}"
    failover = next(line for line in lines if line["message"] == "send failover")
    assert failover["level"] == "WARNING" and failover["relay"] == primary and failover["next_relay"] == second
    assert failover["phase"] == "mail" and failover["smtp_code"] == 553
    assert any(line["message"] == "send ok" and line["relay"] == second for line in lines)
    started = next(line for line in lines if line["message"] == "starting herald-smtp")
    assert [relay["relay"] for relay in started["config"]["relays"]] == [primary, second]
    assert started["config"]["relays"][1]["password"] == "set"
    for secret in (API_KEY, "other-key", SMTP_PASSWORD, FALLBACK_PASSWORD, quote(FALLBACK_PASSWORD, safe=""),
                   *codes, "alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"):
        assert secret not in text, f"{secret!r} leaked into the logs"


def test_startup_warns_when_smtp_is_not_configured(tmp_path):
    with HeraldProcess(tmp_path, {}) as service:
        status, body, headers = post(service.url, {"to": "a@example.com"})
        log = service.log_text()
    assert status == 503 and body["error_code"] == "provider_down"
    assert "SMTP not configured; /v1/send will return 503" in log
    assert "anyone who can reach the port can send mail" in log
    assert "not shared between workers" in log


def test_startup_warns_about_unverified_tls_and_a_password_in_clear(tmp_path, smtp):
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "SMTP_FROM": "a@example.com",
           "SMTP_USER": "u", "SMTP_PASSWORD": "p", "SMTP_USE_STARTTLS": "false", "SMTP_TLS_VERIFY": "false"}
    with HeraldProcess(tmp_path, env) as service:
        log = service.log_text()
    assert "SMTP_TLS_VERIFY=false: the SMTP server's certificate is not checked" in log
    assert "SMTP_USER is set but TLS is off: the SMTP password travels in clear text" in log
