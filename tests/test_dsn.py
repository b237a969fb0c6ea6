"""Bounces come back to SMTP_BOUNCE_ADDRESS, and relays that offer DSN (RFC 3461) are asked for notifications
that name our message_id (issue #23). A raw scripted SMTP server records the exact command lines."""

from __future__ import annotations

import pytest

from herald_smtp.config import ConfigError, settings_from
from herald_smtp.smtp.transport import xtext
from tests.support.client import send
from tests.support.scripted_server import ScriptedServer


def env_for(server: ScriptedServer, **extra: str) -> dict[str, str]:
    return {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "noreply@herald.test",
            "SMTP_USE_STARTTLS": "false"} | extra


def envelope(server: ScriptedServer) -> tuple[str, str]:
    # smtplib writes "mail FROM:" and "rcpt TO:", the pipelined group "MAIL FROM:": the verb's case is free.
    commands = [line.decode().strip() for line in server.commands]
    commands = [line.split(" ", 1)[0].upper() + " " + line.split(" ", 1)[1] for line in commands if " " in line]
    mail = next(line for line in commands if line.upper().startswith("MAIL FROM"))
    rcpt = next(line for line in commands if line.upper().startswith("RCPT TO"))
    return mail, rcpt


@pytest.mark.parametrize("extensions", [("PIPELINING", "DSN"), ("DSN",)], ids=["pipelined", "sequential"])
def test_a_relay_offering_dsn_is_asked_for_failure_and_delay_notices_naming_the_message(make_client, extensions):
    with ScriptedServer(extensions=extensions) as server:
        client = make_client(settings_from(env_for(server, SMTP_BOUNCE_ADDRESS="bounces@herald.test")))
        response = send(client, {"to": "li.wei+otp@example.com"})
        assert response.status_code == 200, response.get_json()
        mail, rcpt = envelope(server)
    message_id = response.get_json()["message_id"]
    assert mail.split() == ["MAIL", "FROM:<bounces@herald.test>", "RET=HDRS", f"ENVID={message_id}"]
    assert rcpt.split() == ["RCPT", "TO:<li.wei+otp@example.com>", "NOTIFY=FAILURE,DELAY",
                            "ORCPT=rfc822;li.wei+2Botp@example.com"]
    assert b"noreply@herald.test" in server.messages[0]  # the From header stays SMTP_FROM


def test_without_dsn_the_envelope_is_as_before(make_client):
    with ScriptedServer(extensions=("PIPELINING",)) as server:
        client = make_client(settings_from(env_for(server)))
        assert send(client, {"to": "a@example.com"}).status_code == 200
        mail, rcpt = envelope(server)
    assert mail == "MAIL FROM:<noreply@herald.test>" and rcpt == "RCPT TO:<a@example.com>"


def test_the_bounce_address_must_be_an_address():
    with pytest.raises(ConfigError, match="^SMTP_BOUNCE_ADDRESS: expected an ASCII email address"):
        settings_from({"SMTP_BOUNCE_ADDRESS": "not an address"})


def test_fallback_relays_use_the_bounce_address_too():
    settings = settings_from({"SMTP_HOST": "a.example", "SMTP_FROM": "noreply@herald.test",
                              "SMTP_BOUNCE_ADDRESS": "bounces@herald.test",
                              "SMTP_FALLBACK_URLS": "smtp://b.example?from=other@herald.test"})
    assert [relay.envelope_sender for relay in settings.relays] == ["bounces@herald.test"] * 2
    assert settings.relays[1].from_address == "other@herald.test"
    without = settings_from({"SMTP_HOST": "a.example", "SMTP_FROM": "noreply@herald.test",
                             "SMTP_FALLBACK_URLS": "smtp://b.example?from=other@herald.test"})
    assert [relay.envelope_sender for relay in without.relays] == ["noreply@herald.test", "other@herald.test"]


@pytest.mark.parametrize("text, encoded", [("abc@example.com", "abc@example.com"), ("a+b=c", "a+2Bb+3Dc"),
                                           ("a b", "a+20b"), ("é", "+C3+A9")])
def test_xtext(text, encoded):
    assert xtext(text) == encoded
