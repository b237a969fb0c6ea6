"""`herald-smtp doctor` against real servers, one misconfiguration at a time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from herald_smtp.config import settings_from
from herald_smtp.tools.doctor import run_doctor
from tests.support.client import smtp_env
from tests.support.net import free_port


def doctor(env: dict, to: str | None = None) -> tuple[int, list[str]]:
    """The exit status and the step lines of a one-relay setup's relay block (its header line checked and dropped;
    the sender domain block after it is tests/test_doctor_domain.py's)."""
    lines: list[str] = []
    code = run_doctor(settings_from(env | {"SMTP_TIMEOUT_SECONDS": "1"}), to, out=lines.append)
    assert lines[0].startswith("== primary relay "), lines
    end = next((i for i, line in enumerate(lines) if i and line.startswith("== ")), len(lines))
    return code, lines[1:end]


def failed_line(lines: list[str]) -> str:
    [line] = [line for line in lines if line.startswith("FAIL")]
    assert line == lines[-1], "the doctor stops at the first failure"
    return line


@pytest.fixture
def good(server_factory):
    return server_factory(starttls=True, auth=("user@example.com", "app-pass-1234"))


def test_everything_passes_and_a_test_mail_arrives(good):
    code, lines = doctor(smtp_env(good), to="ops@example.com")
    assert code == 0, lines
    assert [line.split()[1] for line in lines] == ["config", "dns", "tcp", "banner", "ehlo", "starttls", "auth",
                                                   "mail", "rcpt", "test"]
    assert all(line.startswith("ok ") for line in lines)
    [mail] = good.wait_for(1)
    assert mail.rcpt_tos == ["ops@example.com"] and "doctor" in mail.message["Subject"]
    assert "app-pass-1234" not in "\n".join(lines)


def test_without_to_no_mail_is_sent_and_rcpt_is_skipped(good):
    code, lines = doctor(smtp_env(good))
    assert code == 0
    assert lines[-1].startswith("skip rcpt")
    assert good.messages == []


def test_implicit_tls_works(server_factory):
    server = server_factory(implicit_tls=True, auth=("u", "p"))
    code, lines = doctor(smtp_env(server))
    assert code == 0, lines
    assert any(line.startswith("ok   tls") and "certificate for" in line for line in lines)


def test_starttls_configured_on_an_implicit_tls_port(server_factory):
    server = server_factory(implicit_tls=True)
    env = smtp_env(server) | {"SMTP_USE_TLS": "false", "SMTP_USE_STARTTLS": "true"}
    code, lines = doctor(env)
    assert code == 1
    line = failed_line(lines)
    assert "banner" in line and "SMTP_USE_TLS=true" in line


def test_implicit_tls_configured_on_a_starttls_port(server_factory):
    server = server_factory(starttls=True)
    env = smtp_env(server) | {"SMTP_USE_TLS": "true", "SMTP_USE_STARTTLS": "false"}
    code, lines = doctor(env)
    line = failed_line(lines)
    assert code == 1 and " tls " in line and "SMTP_USE_STARTTLS=true" in line


def test_bad_credentials_get_the_app_password_hint(good):
    code, lines = doctor(smtp_env(good) | {"SMTP_PASSWORD": "account-password"})
    line = failed_line(lines)
    assert code == 1 and "535" in line and "app password" in line
    assert "account-password" not in "\n".join(lines)


def test_server_without_starttls(server_factory):
    server = server_factory()
    code, lines = doctor(smtp_env(server) | {"SMTP_USE_STARTTLS": "true"})
    line = failed_line(lines)
    assert code == 1 and "does not offer STARTTLS" in line and "fix:" in line


def test_self_signed_certificate(good):
    code, lines = doctor(smtp_env(good) | {"SMTP_TLS_CA_FILE": ""})
    line = failed_line(lines)
    assert code == 1 and "certificate rejected" in line and "SMTP_TLS_CA_FILE" in line


def test_certificate_for_another_host(server_factory):
    server = server_factory(starttls=True, cert_names=("mail.example.com",))
    code, lines = doctor(smtp_env(server))
    line = failed_line(lines)
    assert code == 1 and "mismatch" in line and "SMTP_HOST" in line


def test_connection_refused():
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_FROM": "a@herald.test"}
    code, lines = doctor(env)
    line = failed_line(lines)
    assert code == 1 and line.startswith("FAIL tcp") and "refused" in line and "SMTP_PORT" in line


def test_sender_refused(good):
    good.inject("mail", reply="553 5.7.1 Sender address rejected: not owned by user")
    code, lines = doctor(smtp_env(good))
    line = failed_line(lines)
    assert code == 1 and "553" in line and "SMTP_FROM" in line


def test_recipient_refused(good):
    good.reject_rcpt = {"nobody@example.com"}
    code, lines = doctor(smtp_env(good), to="nobody@example.com")
    assert code == 1 and "550" in failed_line(lines)
    assert good.messages == []


def test_missing_config():
    code, lines = doctor({})
    assert code == 1 and lines == [failed_line(lines)] and "SMTP_HOST and SMTP_FROM" in lines[0]


def test_cli_exit_status(good, tmp_path):
    env = {"PATH": "/usr/bin:/bin", **smtp_env(good)}
    ok = subprocess.run([sys.executable, "-m", "herald_smtp.tools.cli", "doctor"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "herald_smtp.tools.cli", "doctor"], cwd=tmp_path,
                         env=env | {"SMTP_PASSWORD": "nope"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "FAIL auth" in bad.stdout


def test_server_that_wants_starttls_before_mail(server_factory):
    server = server_factory()
    server.inject("mail", reply="530 5.7.0 Must issue a STARTTLS command first")
    code, lines = doctor(smtp_env(server))
    line = failed_line(lines)
    assert code == 1 and "530" in line and "SMTP_USE_STARTTLS=true" in line


def test_sender_refused_at_rcpt_is_blamed_on_the_sender(good):
    good.inject("rcpt", reply="553 5.7.1 <noreply@herald.test>: Sender address rejected: not owned by user")
    code, lines = doctor(smtp_env(good), to="ops@example.com")
    line = failed_line(lines)
    assert code == 1 and "sender or relaying refused" in line and "SMTP_FROM" in line


def test_stalled_greeting_says_so(server_factory):
    # An implicit-TLS server waits for a TLS hello, so a plain-first client hears no greeting.
    env = smtp_env(server_factory(implicit_tls=True)) | {"SMTP_USE_TLS": "false", "SMTP_USE_STARTTLS": "false"}
    code, lines = doctor(env)
    line = failed_line(lines)
    assert code == 1 and "no SMTP greeting within 1s" in line and "SMTP_USE_TLS=true" in line


def test_server_without_auth_while_smtp_user_is_set(server_factory):
    server = server_factory()  # plain SMTP, no AUTH offered
    code, lines = doctor(smtp_env(server) | {"SMTP_USE_STARTTLS": "false", "SMTP_USER": "u", "SMTP_PASSWORD": "p"})
    line = failed_line(lines)
    assert code == 1 and line.startswith("FAIL auth") and "does not offer AUTH" in line
    assert "SMTP_USE_STARTTLS=true" in line  # many servers offer AUTH only after TLS


def test_an_invalid_test_address_is_refused_before_connecting(good):
    code, lines = doctor(smtp_env(good), to="..@example.com")
    line = failed_line(lines)
    assert code == 1 and line.startswith("FAIL config") and "not a valid email address" in line
    assert good.connections == 0


def test_a_4xx_relay_refusal_at_rcpt_is_blamed_on_the_sender_too(good):
    good.inject("rcpt", reply="454 4.7.1 <ops@example.com>: Relay access denied")
    code, lines = doctor(smtp_env(good), to="ops@example.com")
    line = failed_line(lines)
    assert code == 1 and "sender or relaying refused" in line and "SMTP_FROM" in line


# --- several relays (SMTP_FALLBACK_URLS): one block each, every relay checked


def all_lines(env: dict, to: str | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = run_doctor(settings_from(env | {"SMTP_TIMEOUT_SECONDS": "1"}), to, out=lines.append)
    return code, lines


def blocks(lines: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for line in lines:
        if line.startswith("== "):
            out.append([line])
        else:
            out[-1].append(line)
    return out


def test_every_relay_gets_a_block_and_a_failing_one_does_not_stop_the_next(good, server_factory):
    implicit = server_factory(implicit_tls=True, auth=("fb@example.com", "p@ss:w/rd%"))
    dead_port = free_port()
    fallbacks = (f"smtp+plain://127.0.0.1:{dead_port},"
                 f"smtps://fb%40example.com:p%40ss%3Aw%2Frd%25@127.0.0.1:{implicit.port}?ca_file={implicit.ca_file}")
    code, lines = all_lines(smtp_env(good) | {"SMTP_FALLBACK_URLS": fallbacks})
    assert code == 1, lines
    primary, dead, third, domain = blocks(lines)
    assert primary[0] == f"== primary relay 127.0.0.1:{good.port}"
    assert dead[0] == f"== fallback relay 1 (SMTP_FALLBACK_URLS) 127.0.0.1:{dead_port}"
    assert third[0] == f"== fallback relay 2 (SMTP_FALLBACK_URLS) 127.0.0.1:{implicit.port}"
    assert domain[0] == "== sender domain herald.test"  # one block for the From all three share
    assert not any(line.startswith("FAIL") for line in primary + third), lines
    assert dead[-1].startswith("FAIL tcp") and "refused" in dead[-1]
    assert any(line.startswith("ok   auth") and "fb@example.com" in line for line in third)
    assert "p@ss:w/rd%" not in "\n".join(lines) and "app-pass-1234" not in "\n".join(lines)


def test_exit_status_is_0_only_when_every_relay_passes_and_each_sends_a_test_mail(good, server_factory):
    other = server_factory()
    code, lines = all_lines(smtp_env(good) | {
        "SMTP_FALLBACK_URLS": f"smtp+plain://127.0.0.1:{other.port}?from=alerts@fallback.test"}, to="ops@example.com")
    assert code == 0, lines
    assert [block[0].split()[1] for block in blocks(lines)] == ["primary", "fallback", "sender", "sender"]
    [mail] = other.wait_for(1)
    assert mail.mail_from == "alerts@fallback.test" and "alerts@fallback.test" in str(mail.message["From"])
    assert len(good.wait_for(1)) == 1


def test_no_auth_mechanism_in_common_names_both_sides():
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer(extensions=("AUTH GSSAPI",)) as server:
        env = {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "a@herald.test",
               "SMTP_USE_STARTTLS": "false", "SMTP_USER": "u", "SMTP_PASSWORD": "p"}
        code, lines = doctor(env)
    line = failed_line(lines)
    assert code == 1 and line.startswith("FAIL auth")
    assert "the server offers AUTH GSSAPI; herald-smtp supports PLAIN, LOGIN" in line
    assert "app password" not in line  # no password was tried


def test_auth_offered_only_after_starttls_while_starttls_is_off(server_factory):
    server = server_factory(starttls=True, auth=("u", "p"))  # like Postfix's smtpd_tls_auth_only
    code, lines = doctor(smtp_env(server) | {"SMTP_USE_STARTTLS": "false"})
    line = failed_line(lines)
    assert code == 1 and line.startswith("FAIL auth")
    assert "the server offers AUTH only after STARTTLS -> fix: set SMTP_USE_STARTTLS=true" in line


def test_an_over_long_reply_line_is_named_as_such():
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer(script={"mail": [b"250 " + b"x" * 9000 + b"\r\n"]}) as server:
        env = {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "a@herald.test",
               "SMTP_USE_STARTTLS": "false"}
        code, lines = doctor(env)
    line = failed_line(lines)
    assert code == 1 and line.startswith("FAIL mail from") and "reply line longer than 8192 bytes" in line
    assert "ask the provider" in line
