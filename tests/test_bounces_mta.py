"""The bounce loop end to end with a real MTA (issue #23), `make test-mta` (CI: needs root for Postfix and
Dovecot, tests/support/mta.py): herald-smtp sends through Postfix (STARTTLS, AUTH, DSN), the next hop refuses
the recipient, Postfix writes the bounce to SMTP_BOUNCE_ADDRESS's Maildir, Dovecot serves it over IMAP, and
`herald-smtp bounces` (the real command) reads it: the message's status turns `bounced` with 5.1.1, the mail
moves to Processed, and the next send to that address is suppressed without a connection to Postfix.
"""

from __future__ import annotations


import pytest
from imapclient import IMAPClient

from herald_smtp.bounces.recorder import Recorder
from herald_smtp.config import settings_from
from herald_smtp.idempotency.store import open_store
from herald_smtp.metrics import BounceMetrics
from herald_smtp.tools.doctor import run_doctor
from tests.support.client import API_KEY, assert_error, send
from tests.support.herald_process import bounce_reader
from tests.support.waiting import wait_for
from tests.support.mta import MtaBed

pytestmark = pytest.mark.mta

TO = "someone@example.org"
HARD_BOUNCE = f"550 5.1.1 <{TO}>: Recipient address rejected: User unknown"


def env_for(mta: MtaBed, redis_url: str) -> dict[str, str]:
    return {"SMTP_FROM": "noreply@example.com", "REDIS_URL": redis_url, "API_KEY": API_KEY,
            "BOUNCE_IMAP_URL": f"imap://{mta.imap_user}:{mta.imap_password}@{mta.imap_host}:{mta.imap_port}/"
                               f"{mta.imap_mailbox}",
            "BOUNCE_IMAP_TLS_CA_FILE": mta.ca_file, "BOUNCE_POLL_SECONDS": "2"} | mta.smtp_env()


def imap(mta: MtaBed) -> IMAPClient:
    client = IMAPClient(mta.imap_host, mta.imap_port, ssl=False, timeout=10)
    client.starttls(mta.client_context())
    client.login(mta.imap_user, mta.imap_password)
    return client


def folder_counts(mta: MtaBed) -> dict[str, int]:
    client = imap(mta)
    try:
        return {name: int(client.select_folder(name, readonly=True)[b"EXISTS"])
                for name in ("INBOX", "Processed", "Unrecognised") if client.folder_exists(name)}
    finally:
        client.logout()


def status_of(client, message_id: str) -> dict:
    return client.get(f"/v1/messages/{message_id}", headers={"X-API-Key": API_KEY}).get_json()


def test_a_bounce_from_postfix_is_read_back_and_suppresses(tmp_path, mta, mta_next_hop, redis_url, redis_client,
                                                            make_client):
    mta_next_hop.inject("rcpt", reply=HARD_BOUNCE)
    env = env_for(mta, redis_url)
    client = make_client(settings_from(env))
    answer = send(client, {"to": TO, "params": {"code": "482913"}}, headers={"X-API-Key": API_KEY})
    assert answer.status_code == 200, answer.get_json()
    message_id = answer.get_json()["message_id"]
    assert status_of(client, message_id)["status"] == "accepted"
    mta.wait_for_mails(1)  # Postfix wrote the bounce

    with bounce_reader(tmp_path, env) as process:
        record = wait_for(lambda: (lambda got: got if got["status"] == "bounced" else None)(
            status_of(client, message_id)), "the status turns bounced", 60, lambda: process.log_text() + mta.logs())
        wait_for(lambda: folder_counts(mta).get("Processed") == 1, "the mail moves to Processed",
                 timeout=60, logs=process.log_text)
    [event] = record["events"]
    assert (event["event"], event["kind"], event["status"]) == ("bounced", "hard", "5.1.1")
    assert "Recipient address rejected" in event["diagnostic"] and "someone@" not in event["diagnostic"]
    assert folder_counts(mta) == {"INBOX": 0, "Processed": 1, "Unrecognised": 0}
    log = process.log_text()
    assert '"message": "bounce"' in log and "482913" not in log and mta.imap_password not in log

    # The next send to the address: refused at once, Postfix never hears of it.
    connections = mta.logs().count("connect from")
    refused = send(client, {"to": TO}, headers={"X-API-Key": API_KEY})
    assert_error(refused, 400, "invalid_destination", "bounced permanently (5.1.1)")
    assert mta.logs().count("connect from") == connections


def test_a_reader_killed_before_moving_records_nothing_twice(tmp_path, mta, mta_next_hop, redis_url, redis_client,
                                                             make_client):
    """The state a reader SIGKILLed between recording and moving leaves: the event recorded, the mail still in
    the inbox. The next reader moves it and records nothing more."""
    mta_next_hop.inject("rcpt", reply=HARD_BOUNCE)
    env = env_for(mta, redis_url)
    settings = settings_from(env)
    client = make_client(settings)
    message_id = send(client, {"to": TO}, headers={"X-API-Key": API_KEY}).get_json()["message_id"]
    [path] = mta.wait_for_mails(1)
    recorder = Recorder(settings, open_store(settings.redis_target, settings.redis_key_prefix), BounceMetrics())
    assert recorder.record(path.read_bytes()).reason == "recorded"  # recorded, never moved

    with bounce_reader(tmp_path, env) as process:
        wait_for(lambda: folder_counts(mta).get("Processed") == 1, "the mail moves to Processed",
                 timeout=60, logs=process.log_text)
    assert "bounce mail moved to Processed: already recorded" in process.log_text()
    assert len(status_of(client, message_id)["events"]) == 1


def test_what_is_no_notification_goes_to_unrecognised_untouched(tmp_path, mta, redis_url, redis_client):
    env = env_for(mta, redis_url)
    out_of_office = (b"From: someone@example.org\r\nTo: bounces@example.com\r\nSubject: Out of office\r\n"
                     b"Message-ID: <ooo-1@example.org>\r\n\r\nBack on Monday.\r\n")
    client = imap(mta)
    try:
        client.append(mta.imap_mailbox, out_of_office)
    finally:
        client.logout()
    with bounce_reader(tmp_path, env) as process:
        wait_for(lambda: folder_counts(mta).get("Unrecognised") == 1, "the mail moves to Unrecognised",
                 timeout=60, logs=process.log_text)
    client = imap(mta)
    try:
        client.select_folder("Unrecognised", readonly=True)
        [uid] = client.search(["ALL"])
        kept = client.fetch([uid], ["BODY.PEEK[]", "FLAGS"])[uid]
    finally:
        client.logout()
    assert kept[b"BODY[]"] == out_of_office and b"\\Seen" not in kept[b"FLAGS"]  # untouched, not even read
    assert "bounce mail moved to Unrecognised: not a delivery status notification" in process.log_text()


def test_the_doctor_walks_the_bounce_mailbox(mta, redis_url):
    lines: list[str] = []
    run_doctor(settings_from(env_for(mta, redis_url)), out=lines.append)
    start = next(i for i, line in enumerate(lines) if line.startswith("== bounce mailbox"))
    block = lines[start:next(i for i, line in enumerate(lines) if line.startswith("== sender domain"))]
    assert [line.split()[:2] for line in block[1:]] == [["ok", "connect"], ["ok", "login"], ["ok", "folders"],
                                                        ["ok", "inbox"]], block
    assert "created Processed, Unrecognised" in block[3] and "INBOX: 0 mail(s) waiting" in block[4]
    assert mta.imap_password not in "\n".join(lines)


def test_a_wrong_imap_password_is_named_by_the_doctor_and_readyz(tmp_path, mta, redis_url):
    env = env_for(mta, redis_url) | {"BOUNCE_IMAP_URL": f"imap://{mta.imap_user}:wrong-Pass1@{mta.imap_host}:"
                                                         f"{mta.imap_port}/INBOX"}
    lines: list[str] = []
    assert run_doctor(settings_from(env), out=lines.append) == 1
    failed = next(line for line in lines if line.startswith("FAIL login"))
    assert "LoginError" in failed and "check the user and password in BOUNCE_IMAP_URL" in failed
    assert "wrong-Pass1" not in "\n".join(lines)


def test_a_bounce_arriving_while_the_reader_idles_is_read_at_once(tmp_path, mta, mta_next_hop, redis_url,
                                                                  redis_client, make_client):
    """Dovecot offers IDLE: a reader that would otherwise look again only after BOUNCE_POLL_SECONDS (an hour
    here) reads the bounce as it lands."""
    mta_next_hop.inject("rcpt", reply=HARD_BOUNCE)
    env = env_for(mta, redis_url) | {"BOUNCE_POLL_SECONDS": "3600"}
    client = make_client(settings_from(env))
    with bounce_reader(tmp_path, env) as process:
        wait_for(lambda: "holds the lock" in process.log_text() and folder_counts(mta).get("Processed") == 0,
                 "the reader made its first pass", timeout=60, logs=process.log_text)
        message_id = send(client, {"to": TO}, headers={"X-API-Key": API_KEY}).get_json()["message_id"]
        wait_for(lambda: status_of(client, message_id)["status"] == "bounced", "the status turns bounced", timeout=60,
                 logs=lambda: process.log_text() + mta.logs())
