"""Secrets at rest: nothing in the idempotency store gives away a one-time code or a mail body."""

from __future__ import annotations

import hashlib
import json
import logging

from herald_smtp.config import settings_from
from herald_smtp.logs import log_startup
from tests.support.client import fingerprint_of, send, smtp_env

SECRET = "replica-shared-secret-0123456789abcdef"
CODE = "482913"
PAYLOAD = {"to": "li@example.com", "subject": "您的验证码", "body": f"您的验证码是 {CODE}。",
           "idempotency_key": "ch_3q2-7wAbCdEfGhIjKlMnOp"}


def stored(redis_client) -> dict:
    return json.loads(redis_client.get("herald-smtp:idempotency:" + PAYLOAD["idempotency_key"]))


def test_with_a_secret_the_stored_fingerprint_is_an_hmac_and_holds_no_code(smtp, make_client, redis_client, redis_url):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": redis_url, "IDEMPOTENCY_SECRET": SECRET}))
    assert send(client, PAYLOAD).status_code == 200
    raw = redis_client.get("herald-smtp:idempotency:" + PAYLOAD["idempotency_key"]).decode()
    record = json.loads(raw)
    assert record["fp"] == fingerprint_of(PAYLOAD, SECRET)
    assert record["fp"] != fingerprint_of(PAYLOAD)  # not the unkeyed hash anyone could recompute
    assert CODE not in raw and "验证码" not in raw  # neither the code nor the body, in any form kept here


def test_without_the_secret_no_code_can_be_tested_against_the_record(smtp, make_client, redis_client, redis_url):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": redis_url, "IDEMPOTENCY_SECRET": SECRET}))
    assert send(client, PAYLOAD).status_code == 200
    fp = stored(redis_client)["fp"]
    # An attacker with the record and the recipient tries every code with the plain hash: no match.
    guesses = (fingerprint_of(PAYLOAD | {"body": f"您的验证码是 {code:06d}。"}) for code in range(482900, 482930))
    assert fp not in set(guesses)


def test_replicas_sharing_the_secret_replay_each_others_answers(smtp, make_client, redis_client, redis_url):
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "IDEMPOTENCY_SECRET": SECRET}
    first, second = make_client(settings_from(env)), make_client(settings_from(env))
    original = send(first, PAYLOAD)
    replay = send(second, PAYLOAD)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.get_json() == original.get_json()
    assert len(smtp.wait_for(1)) == 1


def test_startup_warns_without_a_secret_when_records_are_shared(caplog):
    warning = "IDEMPOTENCY_SECRET is empty"
    for env, expected in [({"REDIS_URL": "redis://127.0.0.1:6379/0"}, True),
                          ({"REDIS_URL": "redis://127.0.0.1:6379/0", "IDEMPOTENCY_SECRET": SECRET}, False),
                          ({}, False)]:  # the in-process store: nobody else can read it
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="herald_smtp"):
            log_startup(settings_from(env))
        assert any(warning in m for m in caplog.messages) is expected, env


def test_the_secret_is_shown_only_as_set():
    redacted = settings_from({"IDEMPOTENCY_SECRET": SECRET}).redacted()
    assert redacted["idempotency_secret"] == "set"
    assert SECRET not in json.dumps(redacted)


def test_the_unkeyed_fallback_is_the_plain_sha256_of_the_message():
    # Without a secret, fingerprints stay what they were, so records written before an upgrade still match.
    canonical = json.dumps({"channel": "email", "to": "li@example.com", "subject": PAYLOAD["subject"],
                            "body": PAYLOAD["body"], "params": {}, "template": "", "locale": ""},
                           sort_keys=True, ensure_ascii=False).encode()
    assert fingerprint_of(PAYLOAD) == hashlib.sha256(canonical).hexdigest()
