"""CHUNKING (RFC 3030): MAIL, RCPT and `BDAT n LAST` with the message in one write, the commit point first.

A raw scripted server (tests/support/scripted_server.py) that offers PIPELINING and CHUNKING takes the
place of the relay: it records what arrived in each read and can refuse or hang up at any point of the
group. The idempotency store is the in-process one, counting its commits, so each test can say whether
the key was committed, kept or released.
"""

from __future__ import annotations

import time

import pytest

from herald_smtp.config import settings_from
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.smtp import transport
from tests.support.client import assert_error, send
from tests.support.scripted_server import HANG_UP, ScriptedServer

TO = "user@example.com"
CHUNKING = ("PIPELINING", "CHUNKING")


class CountingStore(MemoryStore):
    """The in-process store, counting the commit points reached."""

    def __init__(self):
        super().__init__()
        self.commits = 0

    def commit(self, claim, record, ttl_seconds):
        self.commits += 1
        return super().commit(claim, record, ttl_seconds)


def env_for(server: ScriptedServer, **extra: str) -> dict[str, str]:
    return {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "noreply@herald.test",
            "SMTP_USE_STARTTLS": "false", "SMTP_TIMEOUT_SECONDS": "5"} | extra


@pytest.fixture
def store():
    return CountingStore()


def client_for(make_client, server: ScriptedServer, store: MemoryStore, **extra: str):
    return make_client(settings_from(env_for(server, **extra)), store=store)


def verbs(server: ScriptedServer) -> list[str]:
    return [line.split(b" ", 1)[0].split(b":", 1)[0].decode().upper() for line in server.commands
            if not line.upper().startswith((b"EHLO", b"HELO", b"QUIT"))]


def payload(key: str, to: str = TO) -> dict:
    return {"to": to, "idempotency_key": key}


def test_one_round_trip_mail_rcpt_and_bdat_last_with_the_message_in_one_write(make_client, store):
    with ScriptedServer(extensions=CHUNKING) as server:
        client = client_for(make_client, server, store)
        response = send(client, payload("k-ok"))
        assert response.status_code == 200, response.get_json()
        assert verbs(server) == ["MAIL", "RCPT", "BDAT"]  # no DATA, no final dot
        message = server.messages[0]
        # One read carried the whole group: MAIL, RCPT, the BDAT command and every octet of the message.
        group = [read for read in server.reads[0] if read.startswith(b"MAIL FROM:")]
        assert len(group) == 1
        assert group[0] == (b"MAIL FROM:<noreply@herald.test>\r\nRCPT TO:<user@example.com>\r\n"
                            + f"BDAT {len(message)} LAST\r\n".encode() + message)
    assert store.commits == 1
    assert store.get("k-ok").status == 200  # the answer is kept for replays


def test_the_message_goes_as_it_is_the_same_bytes_as_the_data_path(settings):
    # A body line starting with a dot: DATA stuffs it and the server unstuffs it; BDAT sends it untouched.
    message = b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nlast line"
    stored = {}
    for name, extensions in (("data", ("PIPELINING",)), ("bdat", CHUNKING)):
        with ScriptedServer(extensions=extensions) as server:
            relay = settings_from(env_for(server)).relays[0]
            deadline = time.monotonic() + 5
            conn = transport.open_connection(relay, None, deadline)
            assert transport.transmit(conn, "noreply@herald.test", TO, message, deadline)[0] == 250
            transport.close_quietly(conn)
            stored[name] = server.messages
            assert (b"BDAT" in server.received[0]) == (name == "bdat")
    assert stored["bdat"] == stored["data"] == [message + b"\r\n"]


@pytest.mark.parametrize("reply, keeps", [(b"553 5.7.1 Sender address rejected: not owned by user", True),
                                          (b"451 4.3.0 local error in processing", False)], ids=["553", "451"])
def test_mail_refused_in_the_group_is_a_refusal_of_mail_and_the_session_stays(make_client, store, reply, keeps):
    with ScriptedServer(extensions=CHUNKING, script={"mail": [reply + b"\r\n"]}) as server:
        client = client_for(make_client, server, store, SMTP_RETRIES="0")
        body = assert_error(send(client, payload("k-mail")), 500, "send_failed",
                            f"MAIL FROM:<noreply@herald.test> refused: {reply[:3].decode()}")
        assert body["retryable"] is not keeps
        assert server.messages == []
        assert verbs(server) == ["MAIL", "RCPT", "BDAT", "RSET"]  # BDAT refused too (no sender): nothing accepted
        assert store.commits == 1  # the commit came first
        # Then the refusal decides, as without CHUNKING: a permanent one is the key's answer, a transient
        # one releases the key (the committing record does not hold it).
        record = store.get("k-mail")
        if keeps:
            assert record.status == 500 and not record.committing
        else:
            assert record is None
            assert send(client, payload("k-mail")).status_code == 200
            assert len(server.messages) == 1
        assert server.connections == 1  # the session was reset, not dropped


def test_a_refused_recipient_is_invalid_destination_and_suppressed_as_today(make_client, store):
    with ScriptedServer(extensions=CHUNKING, script={"rcpt": [b"550 5.1.1 no such user\r\n"]}) as server:
        client = client_for(make_client, server, store)
        assert_error(send(client, payload("k-rcpt")), 400, "invalid_destination", "550")
        assert server.messages == []
        assert verbs(server) == ["MAIL", "RCPT", "BDAT", "RSET"]  # one attempt: a refused recipient is final
        # A 5.1.1 suppresses the recipient: answered at once, without SMTP.
        assert_error(send(client, payload("k-rcpt-2")), 400, "invalid_destination", "suppressed since")
        assert verbs(server) == ["MAIL", "RCPT", "BDAT", "RSET"]
        assert send(client, payload("k-other", to="other@example.com")).status_code == 200
        assert server.connections == 1


def test_a_transient_bdat_refusal_releases_the_key(make_client, store):
    with ScriptedServer(extensions=CHUNKING, script={"bdat": [b"451 4.3.0 try again later\r\n"]}) as server:
        client = client_for(make_client, server, store)
        body = assert_error(send(client, payload("k-451")), 500, "send_failed", "451")
        assert body["retryable"] is True
        assert server.messages == [] and store.get("k-451") is None
        assert send(client, payload("k-451")).status_code == 200
        assert len(server.messages) == 1 and server.connections == 1


def test_a_permanent_bdat_refusal_is_the_servers_verdict_on_the_message(make_client, store):
    with ScriptedServer(extensions=CHUNKING, script={"bdat": [b"554 5.7.1 rejected as spam\r\n"]}) as server:
        client = client_for(make_client, server, store)
        body = assert_error(send(client, payload("k-554")), 500, "send_failed", "refused the message: 554")
        assert body["retryable"] is False
        assert server.messages == [] and verbs(server).count("BDAT") == 1


def test_a_transient_rcpt_refusal_is_retried_and_the_mail_sent_once(make_client, store):
    with ScriptedServer(extensions=CHUNKING, script={"rcpt": [b"451 4.3.0 try again later\r\n"]}) as server:
        client = client_for(make_client, server, store, SMTP_RETRIES="1")
        assert send(client, payload("k-retry")).status_code == 200
        assert verbs(server) == ["MAIL", "RCPT", "BDAT", "RSET", "MAIL", "RCPT", "BDAT"]
        assert len(server.messages) == 1 and store.get("k-retry").status == 200


@pytest.mark.parametrize("phase", ["mail", "rcpt", "bdat"])
def test_a_connection_dropped_after_the_group_was_written_is_unknown_and_the_key_kept(make_client, store, phase):
    with ScriptedServer(extensions=CHUNKING, script={phase: [HANG_UP]}) as server:
        client = client_for(make_client, server, store, SMTP_RETRIES="1")
        body = assert_error(send(client, payload("k-drop")), 500, "send_failed", "outcome unknown")
        assert body["retryable"] is False
        assert verbs(server).count("MAIL") == 1  # never retried
        # The key keeps the answer: a retry with it is never sent again.
        assert_error(send(client, payload("k-drop")), 500, "send_failed", "outcome unknown")
        assert verbs(server).count("MAIL") == 1 and server.connections == 1


@pytest.mark.parametrize("farewell", [b"", b"421 4.4.2 idle for too long, closing\r\n"], ids=["eof", "421"])
def test_a_dead_pooled_connection_is_found_before_the_commit_and_replaced(make_client, store, farewell):
    with ScriptedServer(extensions=CHUNKING) as server:
        client = client_for(make_client, server, store)
        assert send(client, payload("k-first")).status_code == 200
        server.hang_up_idle(farewell)  # the server dropped the idle session while it waited in the pool
        server.wait_closed()
        assert send(client, payload("k-second")).status_code == 200
        assert server.connections == 2 and len(server.messages) == 2
        # Nothing went into the dead connection; one commit each, none for the dead attempt.
        assert server.received[0].count(b"MAIL FROM:") == 1
        assert store.commits == 2


def test_without_chunking_the_exchange_is_data_as_before(make_client, store):
    with ScriptedServer(extensions=("PIPELINING",)) as server:
        client = client_for(make_client, server, store)
        assert send(client, payload("k-data")).status_code == 200
        assert verbs(server) == ["MAIL", "RCPT", "DATA"]
        assert b"BDAT" not in server.received[0]


def test_chunking_without_pipelining_is_data_as_before(make_client, store):
    with ScriptedServer(extensions=("CHUNKING",)) as server:
        client = client_for(make_client, server, store)
        assert send(client, payload("k-seq")).status_code == 200
        assert verbs(server) == ["MAIL", "RCPT", "DATA"]


def test_smtputf8_and_dsn_parameters_go_in_the_group(make_client, store):
    with ScriptedServer(extensions=CHUNKING + ("SMTPUTF8", "DSN")) as server:
        client = client_for(make_client, server, store, SMTP_BOUNCE_ADDRESS="bounces@herald.test")
        response = send(client, payload("k-utf8", to="josé@example.com"))
        assert response.status_code == 200, response.get_json()
        message_id = response.get_json()["message_id"]
        mail, rcpt, bdat = [line.decode() for line in server.commands if not line.upper().startswith(b"EHLO")][:3]
    assert mail.split() == ["MAIL", "FROM:<bounces@herald.test>", "SMTPUTF8", "RET=HDRS", f"ENVID={message_id}"]
    assert rcpt.split() == ["RCPT", "TO:<josé@example.com>", "NOTIFY=FAILURE,DELAY"]
    assert bdat == f"BDAT {len(server.messages[0])} LAST"


def test_over_starttls_and_auth_a_pooled_connection_carries_one_round_trip_a_mail(tmp_path):
    # The benchmark server offers CHUNKING over STARTTLS + AUTH: the look at a TLS socket must not take
    # TLS housekeeping for a hang-up, and each mail must cost one transaction round trip.
    from bench.processes import BenchSmtpProcess, Certificates

    (tmp_path / "certs").mkdir()
    certs = Certificates.create(tmp_path / "certs")
    with BenchSmtpProcess(tmp_path, certs, "bench-user", "bench-pa55word", chunking=True) as server:
        relay = settings_from({"SMTP_HOST": server.host, "SMTP_PORT": str(server.port),
                               "SMTP_FROM": "noreply@herald.test", "SMTP_USE_STARTTLS": "true",
                               "SMTP_TLS_CA_FILE": str(certs.ca_file), "SMTP_USER": "bench-user",
                               "SMTP_PASSWORD": "bench-pa55word"}).relays[0]
        deadline = time.monotonic() + 10
        conn = transport.open_connection(relay, transport.tls_context(relay), deadline)
        before = server.stats()
        message = b"Subject: tls\r\n\r\n.a dot\r\n"
        for _ in range(2):
            time.sleep(0.05)  # idle a moment, as in the pool
            assert transport.transmit(conn, "noreply@herald.test", TO, message, deadline)[0] == 250
        transport.close_quietly(conn)
        counts = server.stats()
    assert counts["mails"] - before["mails"] == 2 and counts["bdat_commands"] - before["bdat_commands"] == 2
    assert counts["transaction_writes"] - before["transaction_writes"] == 2  # one round trip a mail
    assert counts["connections"] == 1
