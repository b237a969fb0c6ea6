"""Message status (issue #23): every mail the relay accepted gets a record under its message_id, in the same
store as the idempotency records, written in the final record's round trip; GET /v1/messages/{id} and
`herald-smtp status` show it. Real Redis and real SMTP servers throughout."""

from __future__ import annotations

import logging

import pytest

from herald_smtp.config import settings_from
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.tools.status import run_status
from tests.support.client import API_KEY, assert_error, send, smtp_env
from tests.support.scripted_server import ScriptedServer

STATUS_PREFIX = "herald-smtp:message:"


@pytest.fixture
def redis_env(smtp, redis_url, redis_client) -> dict[str, str]:
    return smtp_env(smtp) | {"REDIS_URL": redis_url, "API_KEY": API_KEY}


def get_status(client, message_id: str, key: str | None = API_KEY):
    return client.get(f"/v1/messages/{message_id}", headers={"X-API-Key": key} if key else {})


def sent(client, payload: dict) -> str:
    response = send(client, payload, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["message_id"]


@pytest.mark.parametrize("key", [None, "k-status"], ids=["without-key", "with-key"])
def test_an_accepted_mail_has_a_status_record(make_client, redis_env, smtp, key):
    client = make_client(settings_from(redis_env))
    payload = {"to": "li.wei@example.com"} | ({"idempotency_key": key} if key else {})
    message_id = sent(client, payload)
    response = get_status(client, message_id)
    assert response.status_code == 200
    record = response.get_json()
    assert record["status"] == "accepted" and record["message_id"] == message_id
    assert record["relay"] == f"{smtp.host}:{smtp.port}"
    assert record["reply"]["code"] == 250 and record["recipient"] == "l***@example.com"
    assert record["accepted_at"].endswith("Z") and record["events"] == []
    assert "li.wei" not in response.get_data(as_text=True)


def test_the_status_write_adds_no_round_trip_to_a_send_with_a_key(make_client, redis_env, redis_client):
    client = make_client(settings_from(redis_env))
    send(client, {"to": "warm@example.com"}, headers={"X-API-Key": API_KEY})  # scripts loaded, client connected
    redis_client.config_resetstat()
    sent(client, {"to": "a@example.com", "idempotency_key": "k-round-trips"})
    stats = redis_client.info("commandstats")
    calls = {name: value["calls"] for name, value in stats.items() if name != "cmdstat_config"}
    calls.pop("cmdstat_info", None)
    # Three round trips, the three scripts: reserve (GET of the suppression entry, GET, SET), commit (GET, SETEX)
    # and finish (SETEX of the status, GET, SETEX). commandstats also counts what scripts run; a status or a
    # suppression lookup on its own would add a top-level SET or GET.
    assert calls == {"cmdstat_evalsha": 3, "cmdstat_get": 4, "cmdstat_set": 1, "cmdstat_setex": 3}, calls


def test_the_status_is_kept_for_message_status_ttl_seconds(make_client, redis_env, redis_client):
    client = make_client(settings_from(redis_env | {"MESSAGE_STATUS_TTL_SECONDS": "3600"}))
    for payload in ({"to": "a@example.com"}, {"to": "b@example.com", "idempotency_key": "k-ttl"}):
        message_id = sent(client, payload)
        assert 3590 < redis_client.ttl(STATUS_PREFIX + message_id) <= 3600


def test_an_unknown_or_malformed_message_id_is_a_json_404(make_client, redis_env):
    client = make_client(settings_from(redis_env))
    for message_id in ("0123456789abcdef0123456789abcdef@example.com", "not-ours", "a" * 400):
        response = get_status(client, message_id)
        assert_error(response, 404, "not_found", "MESSAGE_STATUS_TTL_SECONDS")


def test_the_endpoint_needs_the_api_key(make_client, redis_env):
    client = make_client(settings_from(redis_env))
    message_id = sent(client, {"to": "a@example.com"})
    assert_error(get_status(client, message_id, key=None), 401, "unauthorized")
    assert_error(get_status(client, message_id, key="wrong"), 401, "unauthorized")


def test_a_refused_mail_has_no_status(make_client, redis_env, smtp):
    client = make_client(settings_from(redis_env))
    smtp.inject("rcpt", reply="550 5.1.1 no such user", times=1)
    response = send(client, {"to": "nobody@example.com"}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 400 and "message_id" not in response.get_json()
    assert not any(key.startswith(b"herald-smtp:message:") for key in _keys(client))


def _keys(client) -> list[bytes]:
    import redis

    from herald_smtp.web.services import EXTENSION

    settings = client.application.extensions[EXTENSION].settings
    return redis.Redis.from_url(settings.redis_url).keys("*")


def test_the_in_process_store_keeps_statuses_too(make_client, smtp):
    store = MemoryStore()
    client = make_client(settings_from(smtp_env(smtp)), store=store)
    message_id = send(client, {"to": "a@example.com", "idempotency_key": "k-mem"}).get_json()["message_id"]
    assert client.get(f"/v1/messages/{message_id}").get_json()["status"] == "accepted"
    assert store.get_status(message_id)["recipient"] == "a***@example.com"


def test_the_status_command_prints_the_record(make_client, redis_env):
    client = make_client(settings_from(redis_env))
    message_id = sent(client, {"to": "a@example.com"})
    lines: list[str] = []
    assert run_status(settings_from(redis_env), message_id, out=lines.append) == 0
    assert lines[0].split() == ["message_id", message_id] and lines[1].split() == ["status", "accepted"]
    assert any(line.startswith("relay's reply   250") for line in lines)
    unknown: list[str] = []
    assert run_status(settings_from(redis_env), "0" * 32 + "@example.com", out=unknown.append) == 1
    assert "unknown" in unknown[0]
    no_redis: list[str] = []
    assert run_status(settings_from(smtp_env_without_redis(redis_env)), message_id, out=no_redis.append) == 2
    assert "GET /v1/messages/" in no_redis[0]


def smtp_env_without_redis(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name != "REDIS_URL"}


def test_the_relays_queue_id_is_in_the_answer_the_log_and_the_status(make_client, caplog):
    with ScriptedServer(script={"dot": [b"250 2.0.0 Ok: queued as 4XyZ1234AbC\r\n"]}) as relay:
        env = {"SMTP_HOST": relay.host, "SMTP_PORT": str(relay.port), "SMTP_FROM": "noreply@herald.test",
               "SMTP_USE_STARTTLS": "false"}
        client = make_client(settings_from(env))
        caplog.set_level(logging.INFO)
        response = send(client, {"to": "a@example.com"})
    body = response.get_json()
    assert response.status_code == 200 and body["relay_queue_id"] == "4XyZ1234AbC"
    line = next(r for r in caplog.records if r.getMessage() == "send ok")
    assert line.relay_queue_id == "4XyZ1234AbC"  # type: ignore[attr-defined]
    record = client.get(f"/v1/messages/{body['message_id']}").get_json()
    assert record["relay_queue_id"] == "4XyZ1234AbC"
    assert record["reply"] == {"code": 250, "enhanced_code": "2.0.0", "text": "2.0.0 Ok: queued as 4XyZ1234AbC"}


def test_without_a_queue_id_the_answer_has_no_such_field(client, smtp):
    body = send(client, {"to": "a@example.com"}).get_json()
    assert body["ok"] is True and "relay_queue_id" not in body
