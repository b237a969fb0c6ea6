"""Operations: /readyz, /metrics (also summed across gunicorn workers), graceful shutdown."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from herald_smtp.config import settings_from
from tests.support.client import post, send, smtp_env, with_changes
from tests.support.redis_server import RedisServer
from tests.support.herald_process import HeraldProcess

# --- /readyz


def test_ready_when_store_answers_smtp_is_configured_and_circuit_closed(client, smtp):
    before = smtp.connections
    for _ in range(5):
        response = client.get("/readyz")
        assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready" and body["service"] == "herald-smtp"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "store": True, "smtp": True, "circuit": True, "shutdown": True}
    assert smtp.connections == before  # probes never open an SMTP connection


def test_not_ready_without_smtp_config(make_client):
    response = make_client(settings_from({})).get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["smtp"]["ok"] is False and "SMTP_HOST" in body["checks"]["smtp"]["detail"]


def test_redis_down_in_open_mode_is_ready_but_degraded(settings, make_client, tmp_path):
    # Open mode (the default) sends without idempotency while Redis is down: the pod can
    # still send, so it stays in the Service; the body says the store check failed.
    with RedisServer(tmp_path) as redis_server:
        client = make_client(with_changes(settings, redis_url=redis_server.url))
        assert client.get("/readyz").get_json()["status"] == "ready"
        redis_server.stop()
        response = client.get("/readyz")
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "degraded"
        assert {name: check["ok"] for name, check in body["checks"].items()} == {
            "store": False, "smtp": True, "circuit": True, "shutdown": True}
        assert send(client, {"to": "a@example.com", "idempotency_key": "deg-1"}).status_code == 200
        redis_server.start()
        response = client.get("/readyz")
        assert response.status_code == 200 and response.get_json()["status"] == "ready"


def test_not_ready_when_redis_is_down_in_closed_mode(settings, make_client, tmp_path):
    # Closed mode refuses every send with a key while Redis is down: this replica cannot send.
    with RedisServer(tmp_path) as redis_server:
        client = make_client(with_changes(settings, redis_url=redis_server.url, idempotency_failure_mode="closed"))
        assert client.get("/readyz").status_code == 200
        redis_server.stop()
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "not_ready" and body["checks"]["store"]["ok"] is False
        assert body["checks"]["store"]["detail"] == \
            "store unreachable; sends are refused (IDEMPOTENCY_FAILURE_MODE=closed)"
        redis_server.start()
        assert client.get("/readyz").status_code == 200


def test_health_and_readiness_need_no_api_key(settings, make_client):
    client = make_client(with_changes(settings, api_keys=("k",)))
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200


# --- /metrics


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def test_metrics_count_requests_outcomes_replays_and_connections(client, smtp):
    for n in range(3):
        assert send(client, {"to": f"u{n}@example.com", "idempotency_key": f"m-{n}"}).status_code == 200
    send(client, {"to": "u0@example.com", "idempotency_key": "m-0"})  # replay
    send(client, {"to": "u0@example.com", "idempotency_key": "m-0", "subject": "other"})  # conflict
    send(client, {"to": "bad"})
    text = client.get("/metrics").get_data(as_text=True)

    assert metric(text, "herald_smtp_requests_total", endpoint="/v1/send", status="200") == 4
    assert metric(text, "herald_smtp_requests_total", endpoint="/v1/send", status="400",
                  error_code="invalid_destination") == 1
    assert metric(text, "herald_smtp_requests_total", status="409", error_code="idempotency_conflict") == 1
    assert metric(text, "herald_smtp_idempotent_replays_total") == 1
    assert metric(text, "herald_smtp_idempotency_conflicts_total", reason="payload_mismatch") == 1
    assert metric(text, "herald_smtp_send_duration_seconds_count", outcome="sent") == 3
    assert metric(text, "herald_smtp_smtp_connections_opened_total") == 1
    assert metric(text, "herald_smtp_smtp_connections_reused_total") == 2
    assert metric(text, "herald_smtp_smtp_circuit_state") == 0


def test_every_relay_s_connection_counters_exist_at_zero_before_any_send(make_client, smtp):
    # A labelled series appears only once its label is used: without this, the dashboard's and the alerts'
    # rate() over connections reused saw nothing until a worker first reused a connection.
    fallback = "smtp+plain://127.0.0.1:2599"
    client = make_client(settings_from(smtp_env(smtp) | {"SMTP_FALLBACK_URLS": fallback}))
    text = client.get("/metrics").get_data(as_text=True)
    for relay in (f"{smtp.host}:{smtp.port}", "127.0.0.1:2599"):
        for name in ("herald_smtp_smtp_connections_opened_total", "herald_smtp_smtp_connections_reused_total"):
            # Present with the value 0 (metric() would give 0 for an absent sample too).
            assert f'{name}{{relay="{relay}"}} 0.0' in text.splitlines(), (name, relay)


def test_metrics_count_retries_store_errors_and_circuit_state(server_factory, make_client, tmp_path):
    server = server_factory()
    with RedisServer(tmp_path) as redis_server:
        client = make_client(settings_from(smtp_env(server) | {
            "REDIS_URL": redis_server.url, "SMTP_RETRIES": "1", "SMTP_CIRCUIT_THRESHOLD": "1"}))
        server.inject("rcpt", reply="451 4.3.0 later", times=1)
        assert send(client, {"to": "a@example.com"}).status_code == 200
        redis_server.stop()
        send(client, {"to": "a@example.com", "idempotency_key": "k"})  # open mode: sends, counts the error
    server.close_connections()  # no warm connection left: the next send must greet again
    server.inject("ehlo", reply="421 busy")
    send(client, {"to": "a@example.com"})  # one failed request (1 attempt + 1 retry): the circuit opens
    text = client.get("/metrics").get_data(as_text=True)

    assert metric(text, "herald_smtp_smtp_retries_total") == 2
    assert metric(text, "herald_smtp_idempotency_store_errors_total", operation="reserve") == 1
    assert metric(text, "herald_smtp_smtp_circuit_state") == 2
    assert metric(text, "herald_smtp_requests_total", status="500", error_code="send_failed") == 1


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


@pytest.mark.timeout(120)
def test_metrics_add_up_across_four_gunicorn_workers(tmp_path, smtp, redis_client, redis_url):
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "4", "WEB_THREADS": "4"}
    sent, replays, invalid = 24, 6, 5
    with HeraldProcess(tmp_path, env) as service:
        jobs = [{"to": f"u{n}@example.com", "idempotency_key": f"w-{n}"} for n in range(sent)]
        jobs += [{"to": f"u{n}@example.com", "idempotency_key": f"w-{n}"} for n in range(replays)]
        jobs += [{"to": "not-an-address"}] * invalid
        threads = [threading.Thread(target=post, args=(service.url, job)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        scrapes = [scrape(service.url) for _ in range(6)]  # whichever worker answers, the sums agree
        pids = set(re.findall(r"Booting worker with pid: (\d+)", service.log_text()))
    assert len(pids) == 4
    for text in scrapes:
        assert metric(text, "herald_smtp_requests_total", endpoint="/v1/send", status="200") == sent + replays
        assert metric(text, "herald_smtp_requests_total", endpoint="/v1/send", status="400") == invalid
        assert metric(text, "herald_smtp_idempotent_replays_total") == replays
        assert metric(text, "herald_smtp_send_duration_seconds_count", outcome="sent") == sent
        opened = metric(text, "herald_smtp_smtp_connections_opened_total")
        reused = metric(text, "herald_smtp_smtp_connections_reused_total")
        assert opened + reused == sent and 1 <= opened <= 16
    assert len(smtp.wait_for(sent)) == sent


# --- graceful shutdown


@pytest.mark.timeout(120)
def test_sigterm_lets_in_flight_sends_finish_and_record_their_outcome(tmp_path, smtp, redis_client, redis_url):
    smtp.inject("message", delay=2.0)  # every send takes 2 s at the end of DATA
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "2", "WEB_THREADS": "4"}
    service = HeraldProcess(tmp_path, env).start()
    answers: dict[int, tuple] = {}

    def call(n: int) -> None:
        answers[n] = post(service.url, {"to": f"u{n}@example.com", "idempotency_key": f"drain-{n}"})

    threads = [threading.Thread(target=call, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.8)  # all six are in flight, waiting for the server's 250
    service.terminate()
    time.sleep(0.3)
    with pytest.raises(OSError):  # refused or reset: no new work is taken on
        urllib.request.urlopen(service.url + "/healthz", timeout=5).read()
    for t in threads:
        t.join()
    exit_code = service.stop()

    assert exit_code == 0
    assert [answers[n][0] for n in range(6)] == [200] * 6
    assert len(smtp.wait_for(6)) == 6
    for n in range(6):
        record = json.loads(redis_client.get(f"herald-smtp:idempotency:drain-{n}"))
        assert record["status"] == 200 and record["body"]["message_id"] == answers[n][1]["message_id"]
    assert "Worker exiting" in service.log_text() or "Shutting down" in service.log_text()


def test_not_ready_while_the_circuit_is_open_and_ready_again_after_the_cooldown(server_factory, make_client, clock):
    # A not-ready pod gets no traffic, so nothing but time can end its open circuit.
    server = server_factory()
    server.inject("ehlo", reply="421 4.3.2 busy")
    client = make_client(settings_from(smtp_env(server) | {
        "SMTP_RETRIES": "0", "SMTP_CIRCUIT_THRESHOLD": "1", "SMTP_CIRCUIT_COOLDOWN_SECONDS": "0.5"}), clock=clock)
    send(client, {"to": "a@example.com"})
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["circuit"]["ok"] is False
    clock.advance(0.7)
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["checks"]["circuit"]["detail"].endswith(" half_open")
    assert metric(client.get("/metrics").get_data(as_text=True), "herald_smtp_smtp_circuit_state") == 1


def test_a_scrape_while_a_worker_creates_its_value_file_still_answers(tmp_path):
    """A worker's first use of a metric creates its file empty, then sizes it: a scrape in between used to fail
    whole (struct.error, a 500). The empty file holds no value yet and is passed over."""
    from herald_smtp.metrics import Metrics

    (tmp_path / "counter_424242.db").write_bytes(b"")  # as a worker has just opened it
    body, content_type = Metrics(str(tmp_path)).exposition()  # before: struct.error
    assert body == b"" and content_type.startswith("text/plain")  # no value anywhere yet, and no error
