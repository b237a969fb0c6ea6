"""The benchmark's own instruments: the benchmark SMTP server (a real process, driven with smtplib) and the report.

Behaviour only, no timing: what the EHLO offers, AUTH and STARTTLS, that a
pipelined group is answered in one write, and that the counts are right;
then that the report turns a small Run into its tables and verdicts.
"""

from __future__ import annotations

import base64
import smtplib
import ssl

import pytest

from bench import wrk
from bench.calibration import Calibration, calibration_of
from bench.processes import BenchSmtpProcess, Certificates
from bench.report import final_dot, generator_check, ratios, render, round_trip_table
from bench.report import chunking
from bench.results import (CONNECT_PER_MESSAGE, CONNECT_PER_MESSAGE_CHUNKING, DOT_APART, DOT_APART_NODELAY, FLOOR,
                           HERALD, HERALD_CHUNKING, REPLAY, WARM, Latencies, Machine, Measurement, Run)

USER, PASSWORD = "bench-user", "bench-pa55word"
TOKEN_PREFIX = "at-"  # what tests/support/oauth_server.py's access tokens begin with


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates.create(tmp_path_factory.mktemp("bench-certs"))


@pytest.fixture(scope="module")
def server(certs, tmp_path_factory):
    with BenchSmtpProcess(tmp_path_factory.mktemp("bench-smtp"), certs, USER, PASSWORD) as process:
        yield process


@pytest.fixture(scope="module")
def plain_server(certs, tmp_path_factory):
    with BenchSmtpProcess(tmp_path_factory.mktemp("bench-smtp-off"), certs, USER, PASSWORD,
                          delay_ms=5, pipelining=False) as process:
        yield process


@pytest.fixture(scope="module")
def oauth_server(certs, tmp_path_factory):
    with BenchSmtpProcess(tmp_path_factory.mktemp("bench-smtp-oauth"), certs, USER, PASSWORD,
                          oauth_token_prefix=TOKEN_PREFIX) as process:
        yield process


@pytest.fixture(scope="module")
def chunking_server(certs, tmp_path_factory):
    with BenchSmtpProcess(tmp_path_factory.mktemp("bench-smtp-chunking"), certs, USER, PASSWORD,
                          chunking=True) as process:
        yield process


def _connect(server: BenchSmtpProcess, certs: Certificates, login: bool = True) -> smtplib.SMTP:
    conn = smtplib.SMTP(server.host, server.port, timeout=10)
    conn.ehlo()
    conn.starttls(context=ssl.create_default_context(cafile=str(certs.ca_file)))
    conn.ehlo()
    if login:
        conn.login(USER, PASSWORD)
    return conn


def _delta(after: dict, before: dict) -> dict:
    return {name: after[name] - before[name] for name in before}


def test_ehlo_offers_starttls_and_pipelining_then_auth_only_over_tls(server, certs):
    conn = smtplib.SMTP(server.host, server.port, timeout=10)
    conn.ehlo()
    assert conn.has_extn("pipelining") and conn.has_extn("starttls")
    assert not conn.has_extn("auth")
    assert conn.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode())[0] == 530
    conn.starttls(context=ssl.create_default_context(cafile=str(certs.ca_file)))
    conn.ehlo()
    assert conn.has_extn("pipelining") and not conn.has_extn("starttls")
    assert conn.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    conn.quit()


def test_pipelining_switched_off_is_not_in_the_ehlo(plain_server, certs):
    conn = _connect(plain_server, certs)
    assert not conn.has_extn("pipelining")
    assert conn.has_extn("auth") and conn.has_extn("8bitmime")
    assert not conn.sendmail("a@herald.test", ["b@example.com"], b"Subject: off\r\n\r\nstill delivers\r\n")
    conn.quit()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_accepts_the_password_and_refuses_a_wrong_one(server, certs, mechanism):
    conn = _connect(server, certs, login=False)
    conn.user, conn.password = USER, "wrong"
    method = conn.auth_plain if mechanism == "PLAIN" else conn.auth_login
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        conn.auth(mechanism, method, initial_response_ok=False)
    assert refused.value.smtp_code == 535
    assert conn.mail("a@herald.test")[0] == 530  # no mail before AUTH
    conn.rset()
    conn.password = PASSWORD
    assert conn.auth(mechanism, method, initial_response_ok=False)[0] == 235
    assert conn.mail("a@herald.test")[0] == 250
    conn.quit()


def test_a_pipelined_group_is_answered_in_one_write_and_counted(server, certs):
    conn = _connect(server, certs)
    before = server.stats()
    conn.send(b"MAIL FROM:<a@herald.test>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
    replies = conn.sock.recv(4096)
    assert replies == (b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
                       b"354 end data with <CR><LF>.<CR><LF>\r\n")
    group = _delta(server.stats(), before)
    assert group["reply_writes"] == 1 and group["transaction_writes"] == 1
    assert group["commands"] == 4 and group["multi_command_reads"] == 1 and group["reads"] == 1

    # The message (dot-stuffed), its final dot and QUIT in one write: one reply write, both replies.
    conn.send(b"Subject: pipelined\r\n\r\nline one\r\n..a line starting with a dot\r\n.\r\nQUIT\r\n")
    assert conn.sock.recv(4096) == b"250 2.0.0 queued\r\n221 2.0.0 bye\r\n"
    conn.close()
    total = _delta(server.stats(), before)
    assert total["mails"] == 1 and total["reply_writes"] == 2 and total["reads"] == 2
    assert total["commands"] == 5  # MAIL, RCPT, RCPT, DATA, QUIT; the message is not a command
    assert total["multi_command_reads"] == 1  # the second read carried one command (QUIT) after the message
    last = server.control("last")
    assert last["sender"] == "a@herald.test" and last["recipients"] == ["b@example.com", "c@example.com"]
    assert last["message"] == "Subject: pipelined\r\n\r\nline one\r\n.a line starting with a dot\r\n"


def test_chunking_is_offered_only_when_switched_on(server, chunking_server, certs):
    conn = _connect(server, certs)
    assert not conn.has_extn("chunking")
    # Switched off, BDAT is unknown: its size cannot be trusted to find the next command, so the session ends.
    assert conn.docmd("BDAT", "5 LAST")[0] == 501
    conn.close()
    conn = _connect(chunking_server, certs)
    assert conn.has_extn("chunking") and conn.has_extn("pipelining")
    conn.quit()


def test_mail_rcpt_and_bdat_last_with_the_content_are_one_round_trip(chunking_server, certs):
    conn = _connect(chunking_server, certs)
    before = chunking_server.stats()
    # Taken as it is: a line starting with a dot stays one dot, and ".\r\n" inside is no end of data.
    content = b"Subject: chunked\r\n\r\n.a line starting with a dot\r\n.\r\nlast line\r\n"
    conn.send(b"MAIL FROM:<a@herald.test>\r\nRCPT TO:<b@example.com>\r\n"
              + f"BDAT {len(content)} LAST\r\n".encode() + content)
    assert conn.sock.recv(4096) == b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n"
    group = _delta(chunking_server.stats(), before)
    assert group["reads"] == 1 and group["reply_writes"] == 1 and group["transaction_writes"] == 1
    assert group["bdat_commands"] == 1 and group["mails"] == 1 and group["commands"] == 3
    assert group["message_bytes"] == len(content)
    last = chunking_server.control("last")
    assert last["sender"] == "a@herald.test" and last["recipients"] == ["b@example.com"]
    assert last["message"] == content.decode()
    # The session is in step: the next transaction goes on it.
    assert not conn.sendmail("a@herald.test", ["c@example.com"], b"Subject: next\r\n\r\nbody\r\n")
    conn.quit()


def test_chunks_across_reads_make_one_mail(chunking_server, certs):
    conn = _connect(chunking_server, certs)
    before = chunking_server.stats()
    assert conn.mail("a@herald.test")[0] == 250 and conn.rcpt("b@example.com")[0] == 250
    conn.send(b"BDAT 12\r\nSubject: ")  # the first chunk arrives in two reads
    conn.send(b"x\r\n")
    assert conn.getreply() == (250, b"2.0.0 12 octets received")
    conn.send(b"BDAT 8 LAST\r\n\r\nbody\r\n")
    assert conn.getreply() == (250, b"2.0.0 queued")
    counts = _delta(chunking_server.stats(), before)
    assert counts["bdat_commands"] == 2 and counts["mails"] == 1
    assert chunking_server.control("last")["message"] == "Subject: x\r\n\r\nbody\r\n"
    conn.quit()


def test_bdat_after_a_refused_mail_is_refused_once_its_octets_are_read(chunking_server, certs):
    conn = _connect(chunking_server, certs, login=False)
    before = chunking_server.stats()
    conn.send(b"MAIL FROM:<a@herald.test>\r\nRCPT TO:<b@example.com>\r\nBDAT 6 LAST\r\nNOOP\r\nNOOP\r\n")
    # The octets of the chunk ("NOOP\r\n") are not a command; the NOOP after them is.
    assert conn.sock.recv(4096) == (b"530 5.7.0 authentication required\r\n503 5.5.1 need MAIL first\r\n"
                                    b"530 5.7.0 authentication required\r\n250 2.0.0 ok\r\n")
    counts = _delta(chunking_server.stats(), before)
    assert counts["bdat_commands"] == 1 and counts["mails"] == 0 and counts["commands"] == 4
    conn.quit()


def _xoauth2(user: str, token: str):
    """smtplib's authobject for XOAUTH2, as herald-smtp's transport sends it: the initial response, then "" to the
    334 challenge that carries the server's JSON error."""
    return lambda challenge=None: f"user={user}\x01auth=Bearer {token}\x01\x01" if challenge is None else ""


def test_xoauth2_is_offered_only_when_switched_on_and_checks_the_user_and_the_bearer_token(server, oauth_server,
                                                                                              certs):
    assert "XOAUTH2" not in _connect(server, certs, login=False).esmtp_features["auth"].split()
    oauth_server.reset()
    conn = _connect(oauth_server, certs, login=False)
    assert conn.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "XOAUTH2"]
    for user, token in ((USER, "not-one-of-ours"), ("someone-else", "at-abc123"), (USER, TOKEN_PREFIX)):
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            conn.auth("XOAUTH2", _xoauth2(user, token))
        assert refused.value.smtp_code == 535
    assert conn.mail("a@herald.test")[0] == 530
    conn.rset()
    assert conn.auth("XOAUTH2", _xoauth2(USER, "at-abc123"))[0] == 235
    assert not conn.sendmail("a@herald.test", ["b@example.com"], b"Subject: t\r\n\r\nbody\r\n")
    conn.quit()
    counts = oauth_server.stats()
    assert counts["auths"] == 1 and counts["oauth_auths"] == 1 and counts["auth_failures"] == 3
    assert counts["mails"] == 1


def test_counts_of_a_session_without_pipelining(plain_server, certs):
    plain_server.reset()
    conn = _connect(plain_server, certs)
    for n in range(3):
        assert not conn.sendmail("a@herald.test", ["b@example.com"], f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())
    conn.quit()
    counts = plain_server.stats()
    assert counts["connections"] == 1 and counts["tls_handshakes"] == 1 and counts["auths"] == 1
    assert counts["mails"] == 3 and counts["multi_command_reads"] == 0
    # smtplib: MAIL, RCPT, DATA, the message with its dot: four round trips per mail.
    assert counts["transaction_writes"] == 12
    # greeting, EHLO, STARTTLS, EHLO, AUTH, the 12, QUIT
    assert counts["reply_writes"] == 18
    assert plain_server.control("last")["message"] == "Subject: 2\r\n\r\nbody 2\r\n"


# --- the report


def _lat(requests: int, seconds: float, p50: float, errors: int = 0) -> Latencies:
    return Latencies(requests, errors, seconds, p50, p50 * 2, p50 * 3)


def _run(herald_p50_at_20ms: float, transaction_writes: int) -> Run:
    smtp = {"mails": 100, "reply_writes": transaction_writes + 10, "transaction_writes": transaction_writes,
            "reads": 300, "commands": 600, "multi_command_reads": 100 if transaction_writes < 400 else 0,
            "server_cpu_seconds": 0.05}
    no_pipelining = {**smtp, "transaction_writes": 400, "reply_writes": 410, "multi_command_reads": 0}
    measurements = [
        Measurement(CONNECT_PER_MESSAGE, 20.0, True, 1, "smtplib", _lat(10, 2.0, 200.0)),
        Measurement(FLOOR, None, None, 1, "wrk", _lat(4000, 2.0, 0.5), peak_rss_mb=30.0, cpu_ms_per_request=0.4),
        Measurement(FLOOR, None, None, 16, "wrk", _lat(6000, 2.0, 5.0), peak_rss_mb=31.0),
        Measurement(HERALD, 20.0, True, 1, "wrk", _lat(60, 2.0, herald_p50_at_20ms), peak_rss_mb=52.5, smtp=smtp),
        Measurement(HERALD, 20.0, False, 1, "wrk", _lat(40, 2.0, 85.0), peak_rss_mb=51.0, smtp=no_pipelining),
        Measurement(HERALD, 0.0, True, 16, "wrk", _lat(3300, 2.0, 9.0, errors=2), peak_rss_mb=61.25),
        Measurement(REPLAY, 0.0, True, 16, "wrk", _lat(4000, 2.0, 4.0), peak_rss_mb=60.0),
    ]
    return Run(Machine("Test CPU 9000", 2, "3.11.7", "wrk 4.1.0"), "make bench", "2026-01-01T00:00:00+00:00",
               123.0, measurements)


def test_the_report_computes_the_ratios_from_the_figures():
    fast = {r.name: r for r in ratios(_run(herald_p50_at_20ms=30.0, transaction_writes=200))}
    slow = {r.name: r for r in ratios(_run(herald_p50_at_20ms=90.0, transaction_writes=400))}
    latency = next(name for name in fast if "p50" in name)
    assert fast[latency].value == pytest.approx(0.15) and fast[latency].verdict == "PASS"
    assert slow[latency].value == pytest.approx(0.45) and slow[latency].verdict == "MISS"
    throughput = next(name for name in fast if name.startswith("0 ms") and name.endswith("req/s / HTTP floor req/s"))
    assert fast[throughput].value == pytest.approx(1650 / 3000) and fast[throughput].verdict == "PASS"
    replay = next(name for name in fast if name.startswith("replay"))
    assert fast[replay].value == pytest.approx(2000 / 3000) and fast[replay].verdict == "MISS"
    rss = next(name for name in fast if "RSS" in name)
    assert fast[rss].value == pytest.approx(61.25) and fast[rss].verdict == "PASS"


def test_the_report_renders_the_table_and_the_pipelining_verdict():
    text = render(_run(herald_p50_at_20ms=30.0, transaction_writes=200))
    assert "Test CPU 9000, 2 cores" in text and "`make bench`" in text
    assert "| herald-smtp | 0 | on | 16 | wrk | 3300 | 2 | 1650.0 | 9.00 | 18.00 | 27.00 | - | 61.2 |" in text
    assert "| HTTP floor | - | - | 1 | wrk | 4000 | 0 | 2000.0 | 0.50 | 1.00 | 1.50 | 0.40 | 30.0 |" in text
    assert "herald-smtp pipelines: 2.00 transaction round trips per mail" in text
    assert "| PASS |" in text and "| MISS |" in text
    rows = round_trip_table(_run(herald_p50_at_20ms=30.0, transaction_writes=200))
    assert "| herald-smtp | 20 | on | 1 | 100 | 2.10 | 2.00 | 3.00 | 100 | 2.00 | 0.500 |" in rows
    assert "does not pipeline: 4.00" in render(_run(herald_p50_at_20ms=90.0, transaction_writes=400))


def test_a_run_survives_its_json_form():
    run = _run(herald_p50_at_20ms=30.0, transaction_writes=200)
    assert render(Run.from_json(run.to_json())) == render(run)


def test_the_wrk_summary_becomes_latencies():
    summary = wrk.parse_summary("Running 5s test\nBENCH-JSON " + '{"requests":1000,"duration_us":5000000,'
                                '"p50_us":1500.0,"p95_us":4000.0,"p99_us":9000.0,"ok":990,"replayed":0,'
                                '"socket_errors":3,"timeouts":1}\n')
    latencies = wrk.latencies_from(summary)
    assert (latencies.requests, latencies.errors) == (1004, 14)
    assert (latencies.p50_ms, latencies.p95_ms, latencies.p99_ms) == (1.5, 4.0, 9.0)
    assert latencies.seconds == 5.0
    script = wrk.script("run7", max_per_thread=50)
    assert 'local prefix = "run7"' in script and "local max_per_thread = 50" in script
    assert '"idempotency_key":"%s"' in script


def test_the_report_compares_the_dot_written_apart_with_herald_smtp():
    run = _run(herald_p50_at_20ms=130.0, transaction_writes=400)
    run.measurements += [Measurement(WARM, 20.0, True, 1, "smtplib", _lat(50, 5.0, 84.0)),
                         Measurement(DOT_APART, 20.0, True, 1, "smtplib", _lat(40, 5.0, 124.5)),
                         Measurement(DOT_APART_NODELAY, 20.0, True, 1, "smtplib", _lat(50, 5.0, 84.5))]
    lines = final_dot(run)
    assert "| 20 | 84.00 | 124.50 | 84.50 | 130.00 | 3.00 | 4.00 |" in lines
    assert lines[-1].startswith("At 20 ms the dot written apart costs 40.5 ms per mail more than one write, "
                                "0.5 ms with TCP_NODELAY")
    assert "so it writes the dot with the message" in lines[-1]  # 300 reads for 400 round trips


def test_the_python_generator_is_read_against_wrk(tmp_path):
    run = _run(herald_p50_at_20ms=30.0, transaction_writes=200)
    run.measurements.append(Measurement(FLOOR, None, None, 16, "python", _lat(4500, 2.0, 7.0)))
    measured = calibration_of(run)
    assert [(p.concurrency, p.rps_ratio) for p in measured.pairs] == [(16, pytest.approx(0.75))]
    assert "| 16 | 3000.0 | 2250.0 | 0.75 | 5.00 | 7.00 |" in generator_check(run)
    path = tmp_path / "calibration.json"
    path.write_text(measured.to_json())
    python_only = _run(herald_p50_at_20ms=30.0, transaction_writes=200)
    python_only.measurements = [m for m in python_only.measurements if m.generator != "wrk"]
    quoted = generator_check(python_only, Calibration.load(path))
    assert quoted[0].startswith("This run did not use wrk") and "| 16 | 3000.0 | 2250.0 | 0.75 |" in "\n".join(quoted)
    assert generator_check(python_only, Calibration.load(tmp_path / "absent.json"))[0].startswith(
        "This run did not use wrk and no comparison")


def test_the_report_gives_the_chunking_ratio_and_its_round_trips():
    run = _run(herald_p50_at_20ms=30.0, transaction_writes=200)
    assert chunking(run) == ["Not measured in this run."]
    smtp = {"mails": 100, "reply_writes": 110, "transaction_writes": 100, "reads": 100, "commands": 300,
            "multi_command_reads": 100, "bdat_commands": 100, "server_cpu_seconds": 0.05}
    per_message = {**smtp, "transaction_writes": 400, "reads": 900, "bdat_commands": 0, "mails": 10}
    run.measurements += [
        Measurement(CONNECT_PER_MESSAGE_CHUNKING, 20.0, True, 1, "smtplib", _lat(10, 2.0, 200.0), smtp=per_message),
        Measurement(HERALD_CHUNKING, 20.0, True, 1, "wrk", _lat(100, 2.0, 24.0), smtp=smtp)]
    ratio = next(r for r in ratios(run) if "CHUNKING" in r.name)
    assert ratio.value == pytest.approx(0.12) and ratio.verdict == "PASS" and ratio.target == 0.15
    lines = chunking(run)
    assert "| herald-smtp, CHUNKING server | 20 | 1 | 100 | 24.00 | 1.00 | 1.00 | 1.00 |" in lines
    assert "| connect-per-message, CHUNKING server | 20 | 1 | 10 | 200.00 | 40.00 | 90.00 | 0.00 |" in lines
    assert "## CHUNKING: one round trip a mail" in render(run)
