"""The bounce recorder on notifications that Postfix and Exim really wrote (tests/fixtures/dsn/, how they
were made is in its README): each is attributed to the mail herald-smtp sent, recorded as the right event and
kind, and suppresses the address only for a hard bounce about it. Real Redis and a real SMTP server.

The fixtures answer mails sent when they were made; each test sends a mail of its own and puts that mail's
message_id where the fixture has the old one (the ENVID and the returned Message-ID), byte for byte
otherwise, so the status record it lands on is a real one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from herald_smtp.bounces.notification import read
from herald_smtp.bounces.recorder import PROCESSED, Recorder
from herald_smtp.config import settings_from
from herald_smtp.idempotency.store import open_store
from herald_smtp.metrics import BounceMetrics
from tests.support.client import API_KEY, send, smtp_env

FIXTURES = Path(__file__).parent / "fixtures" / "dsn"
RECIPIENT = "user@example.org"
# file: (event, kind, status, suppressed)
EXPECTED = {
    "postfix-hard-bounce.eml": ("bounced", "hard", "5.1.1", True),
    "postfix-hard-bounce-no-dsn.eml": ("bounced", "hard", "5.1.1", True),
    "postfix-delayed.eml": ("delayed", "delayed", "4.2.0", False),
    "postfix-expired.eml": ("bounced", "soft", "4.2.0", False),  # the relay gave up: 4.x.x, never suppresses
    # Exim writes a bare class in Status (5.0.0, 4.0.0); the precise code is the next hop's, in Diagnostic-Code.
    "exim-hard-bounce.eml": ("bounced", "hard", "5.1.1", True),
    "exim-hard-bounce-no-dsn.eml": ("bounced", "hard", "5.1.1", True),
    "exim-delayed.eml": ("delayed", "delayed", "4.2.0", False),
    "exim-expired.eml": ("bounced", "soft", "4.2.0", False),
}
_OUR_ID = re.compile(rb"[0-9a-f]{32}@example\.com")


def test_every_fixture_has_an_expectation():
    assert sorted(path.name for path in FIXTURES.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_real_notification_lands_on_its_mail(name, make_client, smtp, redis_url, redis_client):
    settings = settings_from(smtp_env(smtp) | {"REDIS_URL": redis_url, "API_KEY": API_KEY})
    client = make_client(settings)
    metrics = BounceMetrics()
    recorder = Recorder(settings, open_store(settings.redis_target, settings.redis_key_prefix), metrics)
    answer = send(client, {"to": RECIPIENT}, headers={"X-API-Key": API_KEY})
    message_id = answer.get_json()["message_id"]
    raw = (FIXTURES / name).read_bytes()
    old_ids = set(_OUR_ID.findall(raw))
    assert len(old_ids) == 1, old_ids  # one mail of ours per fixture
    raw = raw.replace(old_ids.pop(), message_id.encode())

    verdict = recorder.record(raw)
    event, kind, status, suppressed = EXPECTED[name]
    assert (verdict.folder, verdict.reason) == (PROCESSED, "recorded")
    record = client.get(f"/v1/messages/{message_id}", headers={"X-API-Key": API_KEY}).get_json()
    assert record["status"] == event
    [recorded] = record["events"]
    assert (recorded["event"], recorded["kind"], recorded["status"]) == (event, kind, status)
    assert recorded["recipient"] == "u***@example.org" and "user@" not in str(recorded)
    assert recorded["reporting_mta"] == "dns; mta.herald.test"
    assert recorded["notification_id"].endswith("@mta.herald.test")
    assert metrics.bounces.labels(kind)._value.get() == 1
    again = send(client, {"to": RECIPIENT}, headers={"X-API-Key": API_KEY})
    assert (again.status_code == 400 and "suppressed" in again.get_json()["error_message"]) == suppressed
    assert recorder.record(raw).reason == "already recorded"


def test_without_dsn_the_whole_mail_came_back_yet_nothing_of_it_is_kept():
    """A relay without DSN returns the whole mail, the login code with it (the README's code 482913): the
    notification's reading keeps the status, the diagnostic and the addresses, never the body."""
    for name in ("postfix-hard-bounce-no-dsn.eml", "exim-hard-bounce-no-dsn.eml"):
        raw = (FIXTURES / name).read_bytes()
        assert b"482913" in raw
        notification = read(raw)
        assert notification is not None and "482913" not in repr(notification)
