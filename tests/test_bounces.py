"""Bounces read back (issue #23): a delivery status notification recorded on its message's status, a hard
bounce about the address suppressing it, safe to record twice, and the reader's lock, readiness and config.

The notifications here are built with the standard library's email package, to vary one field at a time;
tests/test_bounce_fixtures.py reads the ones Postfix and Exim really wrote. Real Redis and a real SMTP server
throughout; the IMAP side (the moves, IDLE, the folders) runs against Dovecot in tests/test_bounces_mta.py
(`make test-mta`, CI only: it needs root to install Postfix and Dovecot).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request

import pytest

from herald_smtp.bounces.reader import BounceReader
from herald_smtp.bounces.recorder import PROCESSED, UNRECOGNISED, Recorder
from herald_smtp.config import ConfigError, settings_from
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.idempotency.store import open_store
from herald_smtp.metrics import BounceMetrics
from herald_smtp.tools.doctor import run_doctor
from tests.support.client import API_KEY, assert_error, send, smtp_env
from tests.support.dsn import notification
from tests.support.herald_process import BOUNCES, bounce_reader
from tests.support.waiting import wait_for
from tests.support.net import LOCALHOST, free_port

@pytest.fixture
def env(smtp, redis_url, redis_client) -> dict[str, str]:
    return smtp_env(smtp) | {"REDIS_URL": redis_url, "API_KEY": API_KEY}


@pytest.fixture
def service(make_client, env):
    """The send service and a recorder on the same Redis store."""
    settings = settings_from(env)
    metrics = BounceMetrics()
    recorder = Recorder(settings, open_store(settings.redis_target, settings.redis_key_prefix), metrics)
    return make_client(settings), recorder, metrics


def sent(client, to: str) -> str:
    response = send(client, {"to": to}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["message_id"]


def status_of(client, message_id: str) -> dict:
    response = client.get(f"/v1/messages/{message_id}", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200
    return response.get_json()


def test_a_hard_bounce_marks_the_mail_bounced_and_suppresses_the_address(service, smtp, caplog):
    client, recorder, metrics = service
    message_id = sent(client, "jhon@example.org")
    with caplog.at_level(logging.INFO, logger="herald_smtp.bounces"):
        verdict = recorder.record(notification(message_id))
    assert (verdict.folder, verdict.reason) == (PROCESSED, "recorded")
    shown = status_of(client, message_id)
    assert shown["status"] == "bounced" and len(shown["events"]) == 1
    event = shown["events"][0]
    assert event["event"] == "bounced" and event["kind"] == "hard" and event["action"] == "failed"
    assert event["status"] == "5.1.1" and event["remote_mta"] == "dns; mx.example.org"
    assert event["diagnostic"] == "smtp; 550 5.1.1 <j***@example.org>: User unknown"
    assert event["arrived_at"] == "Sat, 05 Dec 2026 13:59:58 +0000" and event["recipient"] == "j***@example.org"
    line = next(r for r in caplog.records if r.getMessage() == "bounce")
    assert (line.message_id, line.status, line.kind, line.to, line.suppressed) == (
        message_id, "5.1.1", "hard", "j***@example.org", True)
    assert "jhon" not in caplog.text
    assert metrics.bounces.labels("hard")._value.get() == 1
    # The next send to the address is answered at once, without SMTP.
    before = len(smtp.messages)
    response = send(client, {"to": "Jhon@Example.org"}, headers={"X-API-Key": API_KEY})
    assert_error(response, 400, "invalid_destination", "suppressed")
    assert "5.1.1" in response.get_json()["error_message"]
    assert len(smtp.messages) == before


@pytest.mark.parametrize(("action", "status", "shown", "kind"), [
    ("delayed", "4.4.1", "delayed", "delayed"),
    ("failed", "4.4.7", "bounced", "soft"),  # the relay gave up after temporary failures
    ("failed", "5.7.1", "bounced", "hard"),  # refused for policy: the address exists
    ("delivered", "2.0.0", "delivered", "delivered"),
])
def test_no_other_notification_suppresses(service, action, status, shown, kind):
    client, recorder, metrics = service
    message_id = sent(client, "li.wei@example.org")
    assert recorder.record(notification(message_id, "li.wei@example.org", action, status)).folder == PROCESSED
    record = status_of(client, message_id)
    assert record["status"] == shown and record["events"][0]["kind"] == kind
    assert metrics.bounces.labels(kind)._value.get() == 1
    assert send(client, {"to": "li.wei@example.org"}, headers={"X-API-Key": API_KEY}).status_code == 200


def test_a_bounce_after_a_delay_is_a_bounce(service):
    client, recorder, _ = service
    message_id = sent(client, "a@example.org")
    recorder.record(notification(message_id, "a@example.org", "delayed", "4.4.1", own_id="<d1@relay>"))
    recorder.record(notification(message_id, "a@example.org", "failed", "5.1.1", own_id="<d2@relay>"))
    record = status_of(client, message_id)
    assert record["status"] == "bounced" and [e["event"] for e in record["events"]] == ["delayed", "bounced"]


def test_a_notification_recorded_twice_counts_once(service, caplog):
    """The reader killed after recording and before moving: the next one records the same mail again."""
    client, recorder, metrics = service
    message_id = sent(client, "jhon@example.org")
    raw = notification(message_id)
    with caplog.at_level(logging.INFO, logger="herald_smtp.bounces"):
        first, second = recorder.record(raw), recorder.record(raw)
    assert (first.folder, second.folder) == (PROCESSED, PROCESSED)
    assert second.reason == "already recorded"
    assert len(status_of(client, message_id)["events"]) == 1
    assert [r.getMessage() for r in caplog.records].count("bounce") == 1
    assert metrics.bounces.labels("hard")._value.get() == 1
    assert metrics.suppressions.labels("added")._value.get() == 1


def test_without_an_envid_the_returned_message_id_attributes_it(service):
    client, recorder, _ = service
    message_id = sent(client, "jhon@example.org")
    assert recorder.record(notification(None, returned_id=message_id)).folder == PROCESSED
    assert status_of(client, message_id)["status"] == "bounced"


@pytest.mark.parametrize(("raw", "reason"), [
    (notification("0123456789abcdef@example.com"), "unknown here"),
    (notification(None, returned_id=""), "names no message"),
    (b"From: someone@example.org\nSubject: Out of office\n\nBack on Monday.\n", "not a delivery status"),
    (b"\xff\xfe garbage \x00", "not a delivery status"),
])
def test_what_cannot_be_attributed_goes_to_unrecognised_untouched(service, raw, reason):
    client, recorder, metrics = service
    verdict = recorder.record(raw)
    assert verdict.folder == UNRECOGNISED and reason in verdict.reason
    assert sum(sample.value for sample in metrics.bounces.collect()[0].samples) == 0


def test_a_suppression_ttl_of_zero_records_but_never_suppresses(make_client, env):
    settings = settings_from(env | {"SUPPRESSION_TTL_SECONDS": "0"})
    client = make_client(settings)
    recorder = Recorder(settings, open_store(settings.redis_target, settings.redis_key_prefix), BounceMetrics())
    message_id = sent(client, "jhon@example.org")
    recorder.record(notification(message_id))
    assert status_of(client, message_id)["status"] == "bounced"
    assert sent(client, "jhon@example.org")


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_add_event_is_the_same_on_both_stores(store_kind, redis_url, redis_client):
    from herald_smtp.idempotency.base import StatusWrite

    store = MemoryStore() if store_kind == "memory" else open_store(
        settings_from({"REDIS_URL": redis_url}).redis_target, "herald-smtp:")
    record = {"message_id": "m1@example.com", "relay_queue_id": None, "reply": {"code": 250, "text": "ok"},
              "events": [], "recipient": "l***@example.com"}
    assert store.add_event("m1@example.com", {"notification_id": "n1"}) == "unknown"
    store.put_status(StatusWrite("m1@example.com", record, 3600))
    assert store.add_event("m1@example.com", {"notification_id": "n1", "event": "delayed"}) == "added"
    assert store.add_event("m1@example.com", {"notification_id": "n1", "event": "delayed"}) == "duplicate"
    assert store.add_event("m1@example.com", {"notification_id": "n2", "event": "bounced"}) == "added"
    kept = store.get_status("m1@example.com")
    assert kept == record | {"events": [{"notification_id": "n1", "event": "delayed"},
                                        {"notification_id": "n2", "event": "bounced"}]}
    if store_kind == "redis":
        assert 3590 < redis_client.ttl("herald-smtp:message:m1@example.com") <= 3600  # the expiry is kept


# --- the reader process: configuration, lock, readiness


def reader_env(redis_url: str, imap_port: int) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "BOUNCE_IMAP_URL": f"imaps://bounces:s3cret-pw@{LOCALHOST}:{imap_port}/INBOX",
            "LOG_FORMAT": "json"}


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_an_unreachable_mailbox_is_not_ready_and_named(tmp_path, redis_url):
    env = reader_env(redis_url, free_port())
    with bounce_reader(tmp_path, env, "reader") as reader:
        status, body = wait_for(lambda: (lambda got: got if got[1].get("state") == "failing" else None)(
            get_json(reader.url + "/readyz")))
        assert status == 503 and "cannot open the bounce mailbox" in body["problem"]
        assert f"bounces@{LOCALHOST}" in body["problem"] and "s3cret-pw" not in body["problem"]
        with urllib.request.urlopen(reader.url + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'herald_smtp_bounce_reader_errors_total{stage="imap"}' in metrics
        assert "herald_smtp_bounce_reader_ready 0.0" in metrics
        assert reader.stop() == 0  # SIGTERM: it frees the lock and exits cleanly
    assert "s3cret-pw" not in reader.log_text()


def test_a_second_reader_waits_for_the_lock_and_takes_over(tmp_path, redis_url):
    env = reader_env(redis_url, free_port())
    first = bounce_reader(tmp_path, env, "first").start()
    try:
        wait_for(lambda: "holds the lock" in first.log_text())
        with bounce_reader(tmp_path, env, "second") as second:
            wait_for(lambda: "another bounce reader holds the lock; waiting" in second.log_text())
            status, body = get_json(second.url + "/readyz")
            assert (status, body["state"]) == (503, "waiting for the lock")
            assert first.stop() == 0
            wait_for(lambda: "holds the lock" in second.log_text())
    finally:
        first.stop()


def test_the_lock_of_a_killed_reader_expires(redis_url, redis_client):
    """A reader SIGKILLed keeps its lock only until it expires: the next one takes over by itself."""
    settings = settings_from(reader_env(redis_url, free_port()))
    store = open_store(settings.redis_target, settings.redis_key_prefix)
    dead = BounceReader(settings, store, redis_client, BounceMetrics())
    assert dead.lock.acquire(blocking=False)
    redis_client.pexpire(settings.redis_key_prefix + "bounces:reader", 300)  # as if 30 s had passed
    successor = BounceReader(settings, store, redis_client, BounceMetrics())
    stop = threading.Event()
    worker = threading.Thread(target=successor.run, args=(stop,))
    worker.start()
    try:
        wait_for(lambda: successor.health.state == "failing")  # it got past the lock, to the (closed) port
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()


@pytest.mark.parametrize("raw", [
    "imaps://bounces@imap.example.com/INBOX",  # no password
    "pop3://bounces:pw-Secret1@imap.example.com/",
    "imaps://bounces:pw-Secret1@imap.example.com:99999/INBOX",
    "imaps://bounces:pw-Secret1@imap.example.com:0/INBOX",
    "imaps://bounces:pw-Secret1@[::1/INBOX",
    "imaps://bounces:pw-Secret1@imap.example.com/INBOX?x=1",
])
def test_a_bad_bounce_imap_url_stops_startup_without_quoting_it(raw):
    with pytest.raises(ConfigError) as caught:
        settings_from({"BOUNCE_IMAP_URL": raw})
    assert str(caught.value).startswith("BOUNCE_IMAP_URL: expected imaps://")
    assert "pw-Secret1" not in str(caught.value)


def test_the_bounce_imap_url_is_parsed_and_shown_masked():
    settings = settings_from({"BOUNCE_IMAP_URL": "imap://b%40x.org:p%2Fw%40rd@imap.example.com/Bounces"})
    mailbox = settings.bounce_mailbox
    assert (mailbox.host, mailbox.port, mailbox.implicit_tls) == ("imap.example.com", 143, False)
    assert (mailbox.user, mailbox.password, mailbox.folder) == ("b@x.org", "p/w@rd", "Bounces")
    assert settings.redacted()["bounce_imap_url"] == "imap://b%40x.org:***@imap.example.com/Bounces"
    assert "p/w@rd" not in repr(settings) + repr(mailbox)


@pytest.mark.parametrize(("env", "problem"), [
    ({}, "BOUNCE_IMAP_URL is not set"),
    ({"BOUNCE_IMAP_URL": "imaps://u:p@imap.example.com/INBOX"}, "REDIS_URL is not set"),
])
def test_the_reader_refuses_to_start_without_what_it_needs(tmp_path, env, problem):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", *BOUNCES], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and problem in done.stderr


def test_the_doctor_names_an_unreachable_bounce_mailbox(smtp, redis_url):
    settings = settings_from(smtp_env(smtp) | reader_env(redis_url, free_port()))
    lines: list[str] = []
    assert run_doctor(settings, out=lines.append) == 1
    start = lines.index(next(line for line in lines if line.startswith("== bounce mailbox")))
    block = lines[start:lines.index("== sender domain herald.test")]  # the domain block comes last
    assert block[0] == f"== bounce mailbox bounces@{LOCALHOST}:{settings.bounce_mailbox.port}/INBOX " \
                       "(BOUNCE_IMAP_URL, read by `herald-smtp bounces`)"
    assert block[1].startswith("FAIL connect") and "ConnectionRefusedError" in block[1]
    assert "imaps:// 993" in block[1] and len(block) == 2
    assert "s3cret-pw" not in "\n".join(lines)


def test_herald_smtp_status_shows_the_bounce(service, env):
    from herald_smtp.tools.status import run_status

    client, recorder, _ = service
    message_id = sent(client, "jhon@example.org")
    recorder.record(notification(message_id))
    lines: list[str] = []
    assert run_status(settings_from(env), message_id, out=lines.append) == 0
    assert lines[1] == "status          bounced"
    event = lines[-1]
    assert event.startswith("event           20") and event.endswith(
        " bounced (hard) 5.1.1 at dns; mx.example.org: smtp; 550 5.1.1 <j***@example.org>: User unknown")


def test_a_suppression_from_a_bounce_says_so(service):
    client, recorder, _ = service
    message_id = sent(client, "jhon@example.org")
    recorder.record(notification(message_id))
    shown = client.get("/v1/suppressions/jhon@example.org", headers={"X-API-Key": API_KEY}).get_json()
    assert shown["source"] == "bounce" and shown["message_id"] == message_id
    assert shown["reason"] == {"code": None, "enhanced_code": "5.1.1",
                               "text": "smtp; 550 5.1.1 <j***@example.org>: User unknown"}
    refused = send(client, {"to": "jhon@example.org"}, headers={"X-API-Key": API_KEY}).get_json()
    assert "a delivery status notification said it bounced permanently (5.1.1)" in refused["error_message"]
