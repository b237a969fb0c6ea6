"""Self-tests for the real test servers in tests/support/ and for the dev sink.

Each test talks to a real server with a real client (smtplib, raw sockets).
"""

from __future__ import annotations

import email.policy
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
import redis as redis_py

from herald_smtp.tools.sink import start_sink
from tests.support.net import free_port
from tests.support.redis_server import RedisServer
from tests.support.smtp_server import SmtpTestServer

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "herald", "s3cret"


def make_mail(subject: str = "Your code", to: str = "user@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "noreply@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Your verification code is 123456\n")
    return msg


@pytest.fixture
def smtp_factory(tmp_path):
    """Builds started SmtpTestServers and stops each one afterwards."""
    started: list[SmtpTestServer] = []

    def build(**kwargs) -> SmtpTestServer:
        kwargs.setdefault("certdir", tmp_path / "certs")
        server = SmtpTestServer(**kwargs).start()
        started.append(server)
        return server

    yield build
    for server in started:
        server.stop()


# --------------------------------------------------------------------- Redis


def test_redis_start_stop_restart_same_port(tmp_path):
    redis = RedisServer(tmp_path / "redis")
    try:
        redis.start()
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        with redis.client() as client:
            assert client.ping() is True
            client.set("k", "v")
            redis.flushall()
            assert client.dbsize() == 0

        port = redis.port
        redis.stop()
        assert not redis.is_running()
        with pytest.raises(redis_py.ConnectionError), redis.client() as client:
            client.ping()

        redis.start()
        assert redis.port == port
        with redis.client() as client:
            assert client.ping() is True
    finally:
        redis.stop()


def test_redis_works_with_redis_py(tmp_path):
    with RedisServer(tmp_path) as server:
        client = redis_py.Redis.from_url(server.url)
        try:
            assert client.ping() is True
        finally:
            client.close()


def test_redis_bad_binary_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_SERVER_BIN", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="REDIS_SERVER_BIN"):
        RedisServer(tmp_path)


# ---------------------------------------------------------------------- SMTP


def test_plain_send_is_received_and_parsed(smtp_factory):
    server = smtp_factory()
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.send_message(make_mail("Hello 你好"), to_addrs=["a@example.com", "b@example.com"])
    [got] = server.wait_for(1, timeout=2)
    assert got.mail_from == "noreply@example.com"
    assert got.rcpt_tos == ["a@example.com", "b@example.com"]
    assert got.message["Subject"] == "Hello 你好"
    assert "123456" in got.message.get_content()
    assert b"Subject:" in got.raw
    assert server.connections == 1


def test_starttls_verified_with_auth(smtp_factory):
    server = smtp_factory(starttls=True, auth=(USER, PASSWORD))
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # AUTH only after TLS
        client.starttls(context=server.client_context())
        client.ehlo()
        client.login(USER, PASSWORD)
        client.send_message(make_mail("over tls"))
    assert server.wait_for(1, timeout=2)[0].message["Subject"] == "over tls"
    assert server.auth_attempts == 1 and server.auth_failures == 0


def test_starttls_cert_verifies_against_ca_file_only(smtp_factory):
    server = smtp_factory(starttls=True)
    default_ctx = ssl.create_default_context()  # system CAs: must not trust ours
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=default_ctx)


def test_wrong_password_gets_535(smtp_factory):
    server = smtp_factory(starttls=True, auth=(USER, PASSWORD))
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.starttls(context=server.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login(USER, "wrong")
    assert info.value.smtp_code == 535
    assert server.auth_failures >= 1


def test_auth_required_before_mail(smtp_factory):
    server = smtp_factory(auth=(USER, PASSWORD))
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.send_message(make_mail())
        assert info.value.smtp_code == 530
        client.login(USER, PASSWORD)  # AUTH over plain text is allowed for tests
        client.send_message(make_mail("after login"))
    assert server.wait_for(1, timeout=2)[0].message["Subject"] == "after login"


def test_implicit_tls(smtp_factory):
    server = smtp_factory(implicit_tls=True, auth=(USER, PASSWORD))
    with smtplib.SMTP_SSL(
        server.host, server.port, context=server.client_context(), timeout=5
    ) as client:
        client.login(USER, PASSWORD)
        client.send_message(make_mail("implicit"))
    assert server.wait_for(1, timeout=2)[0].message["Subject"] == "implicit"


def test_reject_rcpt_550_records_nothing(smtp_factory):
    server = smtp_factory()
    server.reject_rcpt = {"Gone@example.com"}
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.send_message(make_mail(to="gone@example.com"))
    code, text = info.value.recipients["gone@example.com"]
    assert code == 550 and b"Recipient address rejected" in text
    assert server.messages == []


def test_mail_and_rcpt_replies(smtp_factory):
    server = smtp_factory()
    server.inject("mail", reply="421 4.3.2 shutting down")
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.send_message(make_mail())
    assert info.value.smtp_code == 421

    server.reset_faults()
    server.inject("rcpt", reply="451 4.3.0 try later")
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.send_message(make_mail())
    assert info.value.recipients["user@example.com"][0] == 451
    assert server.messages == []


def test_data_reply_554(smtp_factory):
    server = smtp_factory()
    server.inject("message", reply="554 5.7.1 rejected as spam")
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.send_message(make_mail())
    assert info.value.smtp_code == 554
    assert server.messages == []

    server.reset_faults()
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.send_message(make_mail("ok now"))
    assert server.wait_for(1, timeout=2)[0].message["Subject"] == "ok now"


@pytest.mark.parametrize("tls", ["plain", "starttls", "implicit"])
def test_drop_after_data(smtp_factory, tls):
    server = smtp_factory(starttls=tls == "starttls", implicit_tls=tls == "implicit")
    server.inject("message", drop=True)
    if tls == "implicit":
        client = smtplib.SMTP_SSL(server.host, server.port, context=server.client_context(), timeout=5)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=5)
    try:
        if tls == "starttls":
            client.starttls(context=server.client_context())
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.send_message(make_mail("dropped"))
        assert time.monotonic() - started < 2  # a hang-up, not a timeout
    finally:
        client.close()
    assert server.messages == []
    assert [r.message["Subject"] for r in server.dropped] == ["dropped"]


def test_two_tls_servers_share_certdir(smtp_factory):
    first = smtp_factory(starttls=True)
    second = smtp_factory(implicit_tls=True)
    assert first.ca_file != second.ca_file
    with smtplib.SMTP(first.host, first.port, timeout=5) as client:
        assert client.starttls(context=first.client_context())[0] == 220
    with smtplib.SMTP_SSL(second.host, second.port, context=second.client_context(), timeout=5) as c:
        assert c.noop()[0] == 250


def test_wait_for_fails_with_count(smtp_factory):
    server = smtp_factory()
    with pytest.raises(AssertionError, match="got 0"):
        server.wait_for(1, timeout=0.1)


@pytest.mark.parametrize("starttls", [False, True])
def test_connections_counted_and_closed_by_server(smtp_factory, starttls):
    server = smtp_factory(starttls=starttls)
    client = smtplib.SMTP(server.host, server.port, timeout=5)
    try:
        if starttls:
            client.starttls(context=server.client_context())
        client.send_message(make_mail("one"))
        client.send_message(make_mail("two"))  # same connection reused
        assert server.connections == 1 and server.open_connections == 1
        server.close_connections()
        assert server.open_connections == 0
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.send_message(make_mail("three"))
    finally:
        client.close()
    assert len(server.wait_for(2, timeout=2)) == 2


def test_smtp_server_restart_keeps_port(smtp_factory):
    server = smtp_factory()
    port = server.port
    server.stop()
    with pytest.raises(OSError):
        smtplib.SMTP(server.host, port, timeout=1)
    server.start()
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        assert client.noop()[0] == 250
    assert server.port == port


def test_port_in_use_fails_loudly():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = SmtpTestServer()
        server.port = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match="could not start"):
            server.start()


# ---------------------------------------------------------------------- sink


def test_sink_writes_one_eml(tmp_path, caplog):
    directory = tmp_path / "mail"  # missing: the sink creates it
    controller = start_sink("127.0.0.1", free_port(), str(directory))
    try:
        with caplog.at_level("INFO", logger="herald_smtp.sink"):
            with smtplib.SMTP(controller.hostname, controller.port, timeout=5) as client:
                _, reply = client.ehlo()
                client.send_message(make_mail("Sink 主题"))
    finally:
        controller.stop()
    files = list(directory.iterdir())
    assert len(files) == 1 and files[0].suffix == ".eml"
    parsed = BytesParser(policy=email.policy.default).parsebytes(files[0].read_bytes())
    assert parsed["Subject"] == "Sink 主题"

    [record] = [r for r in caplog.records if r.name == "herald_smtp.sink"]
    assert record.getMessage() == "sink stored mail"
    assert record.file == str(files[0]) and record.rcpt_count == 1
    assert record.mail_from == "noreply@example.com"
    assert "123456" not in repr(record.__dict__)  # never the body


def test_run_sink_stops_on_sigterm(tmp_path):
    port = free_port()
    code = (
        "import logging, sys; logging.basicConfig(level='INFO'); "
        "from herald_smtp.tools.sink import run_sink; "
        f"sys.exit(run_sink('127.0.0.1', {port}, {str(tmp_path)!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.send_message(make_mail())
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"sink listening" in err and b"sink stored mail" in err
    assert len(list(tmp_path.glob("*.eml"))) == 1


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sink exited early: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"sink did not listen on {port} within {timeout}s")


def test_injected_fault_hits_only_as_many_times_as_asked(smtp_factory):
    server = smtp_factory()
    server.inject("rcpt", reply="451 4.3.0 try later", times=1)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: y\r\n\r\nbody\r\n")
    assert [m.message["Subject"] for m in server.wait_for(1)] == ["y"]


@pytest.mark.parametrize("phase, error", [("mail", smtplib.SMTPSenderRefused), ("data", smtplib.SMTPDataError)])
def test_fault_replies_at_each_phase(smtp_factory, phase, error):
    server = smtp_factory()
    server.inject(phase, reply="554 5.7.1 no")
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(error):
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")
    assert server.messages == []


def test_fault_reply_at_ehlo(smtp_factory):
    server = smtp_factory()
    server.inject("ehlo", reply="421 4.3.2 shutting down")
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        assert client.ehlo()[0] == 421


def test_drop_at_mail_hangs_up(smtp_factory):
    server = smtp_factory()
    server.inject("mail", drop=True)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        with smtplib.SMTP(server.host, server.port, timeout=5) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")


def test_idle_timeout_closes_a_silent_connection(smtp_factory):
    server = smtp_factory(idle_timeout=0.5)
    client = smtplib.SMTP(server.host, server.port, timeout=5)
    client.ehlo()
    time.sleep(1.0)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.mail("a@example.com")
    client.close()


# --- the scripted server's CHUNKING (BDAT)


def test_scripted_server_takes_bdat_octets_as_they_are_and_refuses_bdat_without_a_recipient():
    from tests.support.scripted_server import HANG_UP, ScriptedServer

    with ScriptedServer(extensions=("PIPELINING", "CHUNKING"), script={"bdat": [b"250 ok\r\n"]}) as server:
        conn = smtplib.SMTP(server.host, server.port, timeout=5)
        conn.ehlo()
        assert conn.has_extn("chunking")
        body = b"Subject: x\r\n\r\n.a dot\r\n.\r\n"
        conn.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT %d LAST\r\n" % len(body) + body)
        assert [conn.getreply()[0] for _ in range(3)] == [250, 250, 250]
        assert server.messages == [body]  # no dot-stuffing undone, ".\r\n" is no end of data
        assert body in server.reads[0][-1]  # the group arrived in one read
        conn.send(b"MAIL FROM:<a@b.test>\r\nBDAT 3 LAST\r\nabc")
        assert [conn.getreply()[0] for _ in range(2)] == [250, 554]  # no recipient: refused
        server.script["bdat"] = [HANG_UP]
        conn.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 3 LAST\r\nabc")
        assert [conn.getreply()[0] for _ in range(2)] == [250, 250]
        with pytest.raises(smtplib.SMTPServerDisconnected):
            conn.getreply()  # HANG_UP: the chunk was read, no reply
        assert server.messages == [body]
    with ScriptedServer() as server:
        conn = smtplib.SMTP(server.host, server.port, timeout=5)
        conn.ehlo()
        server.hang_up_idle(b"421 4.4.2 idle too long\r\n")
        assert conn.getreply() == (421, b"4.4.2 idle too long")
