"""The suppression list (issue #23): a recipient the relay refused permanently (5.1.x, 5.2.1 at RCPT) is
refused at once, with no SMTP traffic, for SUPPRESSION_TTL_SECONDS; temporary failures never suppress.
Real Redis (and the in-process store) and a real SMTP server."""

from __future__ import annotations

import logging

import pytest

from herald_smtp.config import settings_from
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.tools.suppression import run_suppression
from tests.support.client import API_KEY, assert_error, send, smtp_env

PREFIX = b"herald-smtp:suppression:"
KEY = {"X-API-Key": API_KEY}


@pytest.fixture(params=["memory", "redis"])
def service(request, make_client, smtp, redis_url, redis_client):
    def build(**env):
        base = smtp_env(smtp) | {"IDEMPOTENCY_SECRET": "hmac-key"} | env
        if request.param == "redis":
            return make_client(settings_from(base | {"REDIS_URL": redis_url}))
        return make_client(settings_from(base), store=MemoryStore())

    return build


def mails_tried(smtp) -> int:
    """RCPT commands the server received: each is one attempt to send."""
    return sum(1 for verb, _ in smtp.commands if verb == "RCPT")


@pytest.mark.parametrize("key", [None, "k-next"], ids=["without-key", "with-key"])
def test_a_permanent_refusal_suppresses_the_recipient(service, smtp, caplog, key):
    client = service()
    smtp.inject("rcpt", reply="550 5.1.1 <jhon@gmial.com>: Recipient address rejected: User unknown", times=1)
    assert_error(send(client, {"to": "jhon@gmial.com", "idempotency_key": "k-first"}), 400, "invalid_destination",
                 "5.1.1")
    tried = mails_tried(smtp)
    caplog.set_level(logging.INFO)
    payload = {"to": "Jhon@GMIAL.com"} | ({"idempotency_key": key} if key else {})  # any case
    body = assert_error(send(client, payload), 400, "invalid_destination", "suppressed since")
    assert "550 5.1.1" in body["error_message"] and body["retryable"] is False
    assert mails_tried(smtp) == tried  # no SMTP traffic at all
    line = next(r for r in caplog.records if r.getMessage() == "send suppressed")
    assert line.to == "J***@GMIAL.com"  # type: ignore[attr-defined]


@pytest.mark.parametrize("reply", ["450 4.2.0 mailbox busy", "452 4.2.2 mailbox full", "552 5.2.2 mailbox full",
                                   "550 5.7.1 rejected by policy"])
def test_temporary_and_other_failures_never_suppress(service, smtp, reply):
    client = service()
    smtp.inject("rcpt", reply=reply, times=10)  # every in-request retry meets it too
    assert send(client, {"to": "busy@example.com"}).status_code in (400, 500)
    smtp.reset_faults()
    assert send(client, {"to": "busy@example.com"}).status_code == 200


def test_suppression_off_with_a_ttl_of_zero(service, smtp):
    client = service(SUPPRESSION_TTL_SECONDS="0")
    smtp.inject("rcpt", reply="550 5.1.1 no such user", times=1)
    assert send(client, {"to": "gone@example.com"}).status_code == 400
    assert send(client, {"to": "gone@example.com"}).status_code == 200  # tried again: nothing suppressed


def test_the_allowlist_does_not_exempt_a_suppressed_address(service, smtp):
    client = service(ALLOWED_RECIPIENT_DOMAINS="example.com")
    smtp.inject("rcpt", reply="550 5.2.1 mailbox disabled", times=1)
    assert send(client, {"to": "old@example.com"}).status_code == 400
    assert_error(send(client, {"to": "old@example.com"}), 400, "invalid_destination", "suppressed since")


def test_the_entry_is_keyed_by_an_hmac_and_holds_no_address(make_client, smtp, redis_url, redis_client):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": redis_url, "IDEMPOTENCY_SECRET": "k",
                                                         "SUPPRESSION_TTL_SECONDS": "3600"}))
    smtp.inject("rcpt", reply="550 5.1.1 <li.wei@example.com> no such user", times=1)
    assert send(client, {"to": "li.wei@example.com"}).status_code == 400
    [key] = redis_client.keys(PREFIX + b"*")
    assert b"li.wei" not in key and 3590 < redis_client.ttl(key) <= 3600
    stored = redis_client.get(key).decode()
    assert "li.wei" not in stored and "l***@example.com" in stored and '"enhanced_code":"5.1.1"' in stored


# --- how support sees and lifts a suppression


@pytest.fixture
def suppressed(make_client, smtp, redis_url, redis_client):
    """A service on Redis with API_KEY set, and li.wei@example.com suppressed by a 550 5.1.1."""
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "API_KEY": API_KEY, "IDEMPOTENCY_SECRET": "k"}
    client = make_client(settings_from(env))
    smtp.inject("rcpt", reply="550 5.1.1 no such user", times=1)
    assert send(client, {"to": "li.wei@example.com"}, headers=KEY).status_code == 400
    return client, env


def test_get_shows_the_entry_and_delete_lifts_it(suppressed, smtp):
    client, _ = suppressed
    response = client.get("/v1/suppressions/li.wei@example.com", headers=KEY)
    assert response.status_code == 200
    entry = response.get_json()
    assert entry["recipient"] == "l***@example.com" and entry["reason"]["enhanced_code"] == "5.1.1"
    assert entry["since"].endswith("Z") and entry["message_id"].endswith("@herald.test")
    assert client.delete("/v1/suppressions/LI.WEI@example.com", headers=KEY).status_code == 204
    assert_error(client.get("/v1/suppressions/li.wei@example.com", headers=KEY), 404, "not_found",
                 "l***@example.com is not suppressed")
    assert_error(client.delete("/v1/suppressions/li.wei@example.com", headers=KEY), 404, "not_found")
    assert send(client, {"to": "li.wei@example.com"}, headers=KEY).status_code == 200  # lifted: it sends again


def test_the_suppression_endpoints_need_the_api_key_and_a_valid_address(suppressed):
    client, _ = suppressed
    assert_error(client.get("/v1/suppressions/li.wei@example.com"), 401, "unauthorized")
    assert_error(client.delete("/v1/suppressions/li.wei@example.com"), 401, "unauthorized")
    assert_error(client.get("/v1/suppressions/not-an-address", headers=KEY), 400, "invalid_destination")


def test_the_suppression_command_shows_lists_and_removes(suppressed):
    _, env = suppressed
    settings = settings_from(env)
    lines: list[str] = []
    assert run_suppression(settings, "show", "li.wei@example.com", out=lines.append) == 0
    assert lines[-1].startswith("l***@example.com  since ") and "550 5.1.1" in lines[-1]
    assert run_suppression(settings, "list", None, out=lines.append) == 0
    assert lines[-1] == "1 suppressed" and "li.wei" not in "\n".join(lines)
    assert run_suppression(settings, "remove", "li.wei@example.com", out=lines.append) == 0
    assert run_suppression(settings, "show", "li.wei@example.com", out=lines.append) == 1
    assert lines[-1] == "l***@example.com: not suppressed"


def test_an_international_address_is_shown_and_lifted_like_any_other(suppressed, smtp):
    # The send accepts an IDN domain (sent in its xn-- form), so the relay can suppress it: support must be able
    # to see and lift it by the address the user typed, through the API and the command alike.
    client, env = suppressed
    smtp.inject("rcpt", reply="550 5.1.1 no such user", times=1)
    assert send(client, {"to": "li@bücher.example"}, headers=KEY).status_code == 400
    assert client.get("/v1/suppressions/li@bücher.example", headers=KEY).status_code == 200
    lines: list[str] = []
    assert run_suppression(settings_from(env), "show", "LI@BÜCHER.example", out=lines.append) == 0, lines
    assert client.delete("/v1/suppressions/li@b%C3%BCcher.example", headers=KEY).status_code == 204
    assert send(client, {"to": "li@bücher.example"}, headers=KEY).status_code == 200
