"""Relay failover (SMTP_FALLBACK_URLS) against two or three real SMTP servers on loopback.

A failover happens only before the final dot, on evidence about the relay (docs/DELIVERY.md, Failover);
each test checks what every server received, so "the fallback was not contacted" is a fact, not a log line.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import quote, urlencode

import pytest

from herald_smtp.config import ConfigError, settings_from
from herald_smtp.smtp.breaker import OPEN
from herald_smtp.web.services import EXTENSION
from tests.support.client import assert_error, send, smtp_env
from tests.support.net import free_port
from tests.test_operations import metric

FALLBACK_USER, FALLBACK_PASSWORD = "fallback@herald.test", "p@ss:w/rd%"


def url_of(server, **query) -> str:
    """The SMTP_FALLBACK_URLS entry for a test server, credentials percent-encoded."""
    scheme = "smtps" if server.implicit_tls else "smtp" if server.starttls else "smtp+plain"
    userinfo = ""
    if server.auth:
        user, password = server.auth
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    if server.ca_file:
        query["ca_file"] = server.ca_file
    return f"{scheme}://{userinfo}{server.host}:{server.port}" + (f"?{urlencode(query)}" if query else "")


def chain_env(primary, *fallbacks: str, **extra: str) -> dict[str, str]:
    env = smtp_env(primary) | {"SMTP_FALLBACK_URLS": ",".join(fallbacks), "IDEMPOTENCY_WAIT_SECONDS": "3"}
    return env | extra


@pytest.fixture
def primary(server_factory):
    return server_factory()


@pytest.fixture
def fallback(server_factory):
    return server_factory()


def client_for(make_client, env, clock=None):
    return make_client(settings_from(env), clock=clock) if clock else make_client(settings_from(env))


def mailer_of(client):
    return client.application.extensions[EXTENSION].send.mailer


# --- no needless traffic


def test_a_healthy_primary_leaves_the_fallback_untouched(primary, fallback, make_client):
    client = client_for(make_client, chain_env(primary, url_of(fallback)))
    for n in range(3):
        assert send(client, {"to": f"u{n}@example.com"}).status_code == 200
    assert len(primary.messages) == 3
    assert fallback.connections == 0 and fallback.messages == []


# --- each failover trigger: nothing transmitted, nothing said about the recipient


def _break(primary, how: str, env: dict) -> dict:
    """Make the primary fail one way; returns the environment to use."""
    if how == "refused":
        return env | {"SMTP_PORT": str(free_port())}
    if how == "timeout":
        primary.inject("ehlo", delay=5)
        return env | {"SMTP_TIMEOUT_SECONDS": "2"}
    if how == "tls":
        return env | {"SMTP_USE_STARTTLS": "true"}  # the primary offers no STARTTLS: we refuse to go on
    if how == "auth":
        return env | {"SMTP_USER": "someone", "SMTP_PASSWORD": "wrong"}  # the primary offers no AUTH
    replies = {
        "421-greeting": ("ehlo", "421 4.3.2 service not available"),
        "421-mail": ("mail", "421 4.7.0 too many connections, closing"),
        "450-mail": ("mail", "450 4.7.1 rate limit exceeded for this account"),
        "sender-at-mail": ("mail", "553 5.7.1 <noreply@herald.test>: Sender address rejected: not owned by user"),
        "sender-at-rcpt": ("rcpt", "553 5.7.1 <noreply@herald.test>: Sender address rejected: not owned by user"),
        "relay-at-rcpt": ("rcpt", "554 5.7.1 <a@example.com>: Relay access denied"),
        "data-refused": ("data", "554 5.7.1 sending quota exceeded"),
    }
    phase, reply = replies[how]
    primary.inject(phase, reply=reply)
    return env


TRIGGERS = ["refused", "timeout", "tls", "auth", "421-greeting", "421-mail", "450-mail", "sender-at-mail",
            "sender-at-rcpt", "relay-at-rcpt", "data-refused"]
PHASE_OF = {"refused": "connect", "timeout": "connect", "tls": "tls", "auth": "auth", "421-greeting": "connect",
            "421-mail": "mail", "450-mail": "mail", "sender-at-mail": "mail", "sender-at-rcpt": "rcpt",
            "relay-at-rcpt": "rcpt", "data-refused": "data"}


@pytest.mark.parametrize("how", TRIGGERS)
def test_each_trigger_moves_the_mail_to_the_fallback(primary, fallback, make_client, caplog, how):
    caplog.set_level(logging.INFO, logger="herald_smtp")
    env = _break(primary, how, chain_env(primary, url_of(fallback)))
    client = client_for(make_client, env)
    response = send(client, {"to": "a@example.com", "body": "code 123456"})
    assert response.status_code == 200, response.get_json()
    assert primary.messages == []
    [mail] = fallback.messages
    assert mail.rcpt_tos == ["a@example.com"] and mail.message["Message-ID"] == f"<{response.get_json()['message_id']}>"
    [failover] = [r for r in caplog.records if r.getMessage() == "send failover"]
    assert failover.relay == mailer_of(client).relays[0].name and failover.next_relay == f"127.0.0.1:{fallback.port}"
    assert failover.phase == PHASE_OF[how]
    [ok] = [r for r in caplog.records if r.getMessage() == "send ok"]
    assert ok.relay == f"127.0.0.1:{fallback.port}"


def test_refused_credentials_move_the_mail_to_the_fallback(server_factory, fallback, make_client):
    primary = server_factory(auth=("herald", "right-password"))
    env = chain_env(primary, url_of(fallback), SMTP_PASSWORD="rotated-away")
    client = client_for(make_client, env)
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert primary.auth_failures >= 1 and primary.messages == [] and len(fallback.messages) == 1


def test_a_failover_is_not_preceded_by_retries_on_the_failing_relay(primary, fallback, make_client):
    primary.inject("ehlo", reply="421 4.3.2 busy")
    client = client_for(make_client, chain_env(primary, url_of(fallback), SMTP_RETRIES="2"))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert primary.connections == 1 and len(fallback.messages) == 1


def test_failover_metrics_carry_the_relays(primary, fallback, make_client):
    primary.inject("mail", reply="553 5.7.1 Sender address rejected")
    client = client_for(make_client, chain_env(primary, url_of(fallback)))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    first, second = f"127.0.0.1:{primary.port}", f"127.0.0.1:{fallback.port}"
    assert metric(text, "herald_smtp_smtp_failovers_total", **{"from": first, "to": second}) == 1
    assert metric(text, "herald_smtp_send_duration_seconds_count", outcome="sent", relay=second) == 1
    assert metric(text, "herald_smtp_smtp_connections_opened_total", relay=first) == 1
    assert metric(text, "herald_smtp_smtp_connections_opened_total", relay=second) == 1
    assert 'herald_smtp_smtp_circuit_state{relay="%s"} 0.0' % second in text


def test_the_third_relay_takes_the_mail_when_two_fail(primary, server_factory, make_client):
    second, third = server_factory(), server_factory()
    primary.inject("ehlo", reply="421 4.3.2 busy")
    second.inject("mail", reply="451 4.3.0 local error")
    client = client_for(make_client, chain_env(primary, url_of(second), url_of(third)))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert primary.messages == second.messages == [] and len(third.messages) == 1


# --- never a failover: the recipient's own refusal, a transient RCPT reply, anything after the final dot


def test_a_refused_recipient_is_400_and_no_other_relay_is_tried(primary, fallback, make_client):
    primary.reject_rcpt = {"nobody@example.com"}
    client = client_for(make_client, chain_env(primary, url_of(fallback)))
    assert_error(send(client, {"to": "nobody@example.com"}), 400, "invalid_destination", "550")
    assert fallback.connections == 0


def test_a_transient_rcpt_reply_stays_on_the_relay(primary, fallback, make_client):
    primary.inject("rcpt", reply="451 4.7.1 greylisted, try again later")
    client = client_for(make_client, chain_env(primary, url_of(fallback), SMTP_RETRIES="0"))
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "451")
    assert body["retryable"] is True and fallback.connections == 0


@pytest.mark.parametrize("fault", [{"drop": True}, {"reply": "451 4.3.0 try later"}, {"reply": "554 5.7.1 spam"}],
                         ids=["lost-after-dot", "451-after-dot", "554-after-dot"])
def test_after_the_final_dot_no_other_relay_is_tried(primary, fallback, make_client, fault):
    primary.inject("message", **fault)
    client = client_for(make_client, chain_env(primary, url_of(fallback)))
    payload = {"to": "a@example.com", "idempotency_key": "after-dot"}
    assert_error(send(client, payload), 500, "send_failed")
    assert fallback.connections == 0 and fallback.messages == []
    if fault.get("drop"):
        assert len(primary.dropped) == 1
        # The outcome stays unknown: the kept record replays, still nothing at the fallback.
        again = send(client, payload)
        assert again.headers["Idempotent-Replayed"] == "true" and "outcome unknown" in again.get_json()["error_message"]
        assert fallback.connections == 0


# --- circuits


def test_a_primary_whose_circuit_is_open_is_not_contacted(primary, fallback, make_client, clock, caplog):
    primary.inject("ehlo", reply="421 4.3.2 busy")
    env = chain_env(primary, url_of(fallback), SMTP_CIRCUIT_THRESHOLD="1", SMTP_CIRCUIT_COOLDOWN_SECONDS="30")
    client = client_for(make_client, env, clock)
    assert send(client, {"to": "a@example.com"}).status_code == 200  # fails over and opens the primary's circuit
    assert mailer_of(client).relays[0].breaker.state == OPEN
    caplog.clear()
    assert send(client, {"to": "b@example.com"}).status_code == 200
    assert primary.connections == 1 and len(fallback.messages) == 2
    [failover] = [r for r in caplog.records if r.getMessage() == "send failover"]
    assert failover.phase == "circuit_open"
    # After the cooldown the primary gets its trial again, and takes the mail once it works.
    primary.reset_faults()
    clock.advance(31)
    assert send(client, {"to": "c@example.com"}).status_code == 200
    assert len(primary.messages) == 1 and len(fallback.messages) == 2


def test_every_relay_failing_names_each_failure(primary, fallback, make_client):
    primary.inject("ehlo", reply="421 4.3.2 busy")
    fallback.inject("mail", reply="553 5.7.1 Sender address rejected")
    client = client_for(make_client, chain_env(primary, url_of(fallback), SMTP_RETRIES="0"))
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "every SMTP relay failed")
    message = body["error_message"]
    assert f"127.0.0.1:{primary.port} (connect, 421)" in message
    assert f"127.0.0.1:{fallback.port} (mail, 553)" in message
    assert body["retryable"] is False  # the last relay's answer decides: a permanent refusal, kept


def test_every_circuit_open_is_503_with_retry_after(primary, fallback, make_client, clock):
    primary.inject("ehlo", reply="421 4.3.2 busy")
    fallback.inject("ehlo", reply="421 4.3.2 busy")
    env = chain_env(primary, url_of(fallback), SMTP_CIRCUIT_THRESHOLD="1", SMTP_CIRCUIT_COOLDOWN_SECONDS="30",
                    SMTP_RETRIES="0")
    client = client_for(make_client, env, clock)
    assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "every SMTP relay failed")
    clock.advance(0.5)  # into each relay's first cooldown, 2 s (it grows while a relay stays down)
    response = send(client, {"to": "a@example.com"})
    assert_error(response, 503, "provider_down", "circuit breaker is open")
    assert response.headers["Retry-After"] == "2"
    assert primary.connections == 1 and fallback.connections == 1


# --- idempotency across the chain


def test_ten_simultaneous_duplicates_while_the_primary_is_down_send_one_mail(primary, fallback, make_client):
    fallback.inject("message", delay=0.3)  # keep the first send in flight while the duplicates arrive
    env = chain_env(primary, url_of(fallback), SMTP_PORT=str(free_port()))
    client = client_for(make_client, env)
    payload = {"to": "a@example.com", "idempotency_key": "dup-during-failover"}
    answers, barrier = [], threading.Barrier(10)

    def one():
        barrier.wait()
        answers.append(send(client, payload))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 10
    assert len({a.get_json()["message_id"] for a in answers}) == 1
    assert len(fallback.messages) == 1


# --- a fallback with implicit TLS, credentials with reserved characters, its own sender


def test_implicit_tls_fallback_with_reserved_characters_in_the_credentials(primary, server_factory, make_client):
    fallback = server_factory(implicit_tls=True, auth=(FALLBACK_USER, FALLBACK_PASSWORD))
    entry = url_of(fallback, **{"from": "alerts@fallback.test", "from_name": "Fallback Sender"})
    assert "%40" in entry and "%3A" in entry and "%2F" in entry and "%25" in entry
    client = client_for(make_client, chain_env(primary, entry, SMTP_PORT=str(free_port())))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert fallback.auth_attempts == 1 and fallback.auth_failures == 0
    [mail] = fallback.messages
    # `from` sets both the envelope sender and the From header.
    assert mail.mail_from == "alerts@fallback.test"
    assert str(mail.message["From"]) == "Fallback Sender <alerts@fallback.test>"


def test_the_primary_keeps_its_own_sender_when_a_fallback_has_another(primary, fallback, make_client):
    client = client_for(make_client, chain_env(primary, url_of(fallback, **{"from": "alerts@fallback.test"})))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    [mail] = primary.messages
    assert mail.mail_from == "noreply@herald.test" and str(mail.message["From"]) == "Herald Test <noreply@herald.test>"


def test_a_fallback_inherits_the_sender_and_tls_settings(primary, server_factory, make_client):
    fallback = server_factory(starttls=True)
    # No ca_file in the URL: SMTP_TLS_CA_FILE is inherited (the test CA of the fallback, set for the primary).
    entry = f"smtp://{fallback.host}:{fallback.port}"
    env = chain_env(primary, entry, SMTP_PORT=str(free_port()), SMTP_TLS_CA_FILE=fallback.ca_file)
    client = client_for(make_client, env)
    assert send(client, {"to": "a@example.com"}).status_code == 200
    [mail] = fallback.messages
    assert mail.mail_from == "noreply@herald.test" and str(mail.message["From"]) == "Herald Test <noreply@herald.test>"


# --- malformed URLs stop startup: one line, the position, never the password


@pytest.mark.parametrize("urls, position", [
    ("smtp://a.example,,smtp://b.example", 2),
    ("smtp://u:s3cr3t-pw@a.example:99999", 1),
    ("http://u:s3cr3t-pw@a.example", 1),
    ("smtp://a.example,smtp://:s3cr3t-pw@b.example", 2),
    ("smtp+plain://u:s3cr3t-pw@10.0.0.1", 1),
    ("smtp://a.example,smtp://b.example,smtps://u:s3cr3t-pw@c.example?from=not-an-address", 3),
    ("smtp://a.example?colour=blue", 1),
    ("smtp://a.example/path", 1),
    (",", 1),
])
def test_a_malformed_fallback_url_names_the_variable_and_the_position_never_the_password(urls, position):
    with pytest.raises(ConfigError) as raised:
        settings_from({"SMTP_FALLBACK_URLS": urls})
    message = str(raised.value)
    assert message.startswith("SMTP_FALLBACK_URLS: expected") and f"entry {position} " in message
    assert "smtp://[user[:password]@]host[:port]" in message
    assert "s3cr3t-pw" not in message and "\n" not in message


def test_fallback_urls_parse_into_relays():
    settings = settings_from({
        "SMTP_HOST": "primary.example", "SMTP_FROM": "noreply@example.com", "SMTP_FROM_NAME": "Example",
        "SMTP_TLS_VERIFY": "false",
        "SMTP_FALLBACK_URLS": "smtps://u%40x:p%40ss%3Aw%2Frd%25@b.example?from=other@example.org&tls_verify=true,"
                              " smtp://c.example:2525 , smtp+plain://10.0.0.5"})
    primary, b, c, d = settings.relays
    assert (primary.name, primary.tls) == ("primary.example:587", "starttls")
    assert (b.name, b.tls, b.user, b.password, b.from_address, b.tls_verify) == (
        "b.example:465", "implicit", "u@x", "p@ss:w/rd%", "other@example.org", True)
    assert (c.name, c.tls, c.user, c.from_address, c.from_name, c.tls_verify) == (
        "c.example:2525", "starttls", "", "noreply@example.com", "Example", False)
    assert (d.name, d.tls) == ("10.0.0.5:25", "plain")
    assert "p@ss" not in repr(settings)


def test_the_startup_config_lists_the_relays_with_secrets_as_set_or_unset():
    settings = settings_from({"SMTP_HOST": "primary.example", "SMTP_FROM": "noreply@example.com",
                              "SMTP_FALLBACK_URLS": "smtps://u:p%40ss@b.example,smtp://c.example"})
    shown = settings.redacted()
    assert [r["relay"] for r in shown["relays"]] == ["primary.example:587", "b.example:465", "c.example:587"]
    assert [r["password"] for r in shown["relays"]] == ["unset", "set", "unset"]
    assert "p@ss" not in repr(shown) and "smtp_fallbacks" not in shown


def test_startup_warns_about_a_plain_fallback(caplog):
    from herald_smtp.logs import log_startup

    settings = settings_from({"SMTP_HOST": "primary.example", "SMTP_FROM": "noreply@example.com",
                              "SMTP_FALLBACK_URLS": "smtp+plain://10.0.0.5:2525,smtp://c.example?tls_verify=false"})
    caplog.set_level(logging.INFO, logger="herald_smtp")
    log_startup(settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("10.0.0.5:2525 is smtp+plain" in w for w in warnings)
    assert any("c.example:587 has tls_verify=false" in w for w in warnings)


def test_a_recipient_that_needs_smtputf8_on_a_relay_without_it_does_not_fail_over(server_factory, fallback,
                                                                                make_client):
    primary = server_factory(smtputf8=False)
    client = client_for(make_client, chain_env(primary, url_of(fallback)))
    assert_error(send(client, {"to": "josé@example.com"}), 400, "invalid_destination", "SMTPUTF8")
    assert fallback.connections == 0


def test_the_fallback_keeps_its_pooled_connection_across_failovers(primary, fallback, make_client):
    primary.inject("mail", reply="553 5.7.1 Sender address rejected")
    client = client_for(make_client, chain_env(primary, url_of(fallback)))
    for n in range(3):
        assert send(client, {"to": f"u{n}@example.com"}).status_code == 200
    assert len(fallback.messages) == 3 and fallback.connections == 1
    # The primary's session survived each refusal too (RSET, back to its pool).
    assert primary.connections == 1
