"""Readiness means "a send could succeed here now" (docs/DEPLOYMENT.md, Readiness).

- the store down in open mode: 200 `degraded` (sends go out without idempotency);
- the store down in closed mode, SMTP not configured, the circuit open, or the
  instance draining after SIGTERM: 503 `not_ready`;
- each check gives a short reason; the raw error (Redis host and port) stays in
  the log and the metrics.

The open/closed store cases without other failures are in test_operations.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.request

import pytest

from herald_smtp.config import settings_from
from tests.support.client import post, send, smtp_env, with_changes
from tests.support.herald_process import HeraldProcess
from tests.support.net import LOCALHOST
from tests.support.redis_server import RedisServer
from tests.test_operations import metric

OPEN_REASON = "store unreachable; sends go out without idempotency (IDEMPOTENCY_FAILURE_MODE=open)"
CLOSED_REASON = "store unreachable; sends are refused (IDEMPOTENCY_FAILURE_MODE=closed)"


@pytest.fixture
def doomed_redis(tmp_path):
    with RedisServer(tmp_path) as server:
        yield server


# --- the store: a short reason for the probe, the cause in the log and the metric


@pytest.mark.parametrize("mode, status, reason", [("open", 200, OPEN_REASON), ("closed", 503, CLOSED_REASON)])
def test_store_outage_gives_the_probe_a_short_reason_and_the_log_the_cause(
        settings, make_client, doomed_redis, caplog, mode, status, reason):
    client = make_client(with_changes(settings, redis_url=doomed_redis.url, idempotency_failure_mode=mode))
    doomed_redis.stop()
    caplog.set_level(logging.ERROR, logger="herald_smtp")

    response = client.get("/readyz")
    assert response.status_code == status
    assert response.get_json()["checks"]["store"] == {"ok": False, "detail": reason}
    text = response.get_data(as_text=True)
    # The circuit check names the SMTP relays (host:port), which are on 127.0.0.1 too.
    others = json.dumps({name: check for name, check in response.get_json()["checks"].items() if name != "circuit"})
    for leak in (str(doomed_redis.port), "Error", "Redis"):
        assert leak not in text, f"{leak!r} leaks into /readyz: {text}"
    assert LOCALHOST not in others, f"the Redis host leaks into /readyz: {text}"

    logged = [r for r in caplog.records if r.getMessage() == "readiness: idempotency store unavailable"]
    assert len(logged) == 1
    assert f"{LOCALHOST}:{doomed_redis.port}" in logged[0].cause  # the detail the probe does not show
    assert logged[0].failure_mode == mode
    scraped = client.get("/metrics").get_data(as_text=True)
    assert metric(scraped, "herald_smtp_idempotency_store_errors_total", operation="ping") == 1


# --- a hard failure is never hidden behind `degraded`


def test_smtp_not_configured_is_not_ready_even_if_the_store_alone_would_be_degraded(make_client, doomed_redis):
    client = make_client(settings_from({"REDIS_URL": doomed_redis.url}))  # open mode, no SMTP_HOST
    doomed_redis.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["smtp"]["ok"] is False and body["checks"]["store"] == {"ok": False, "detail": OPEN_REASON}


def test_open_circuit_is_not_ready_even_if_the_store_alone_would_be_degraded(server_factory, make_client,
                                                                             doomed_redis, clock):
    server = server_factory()
    server.inject("ehlo", reply="421 4.3.2 busy")
    client = make_client(settings_from(smtp_env(server) | {
        "REDIS_URL": doomed_redis.url, "SMTP_RETRIES": "0", "SMTP_CIRCUIT_THRESHOLD": "1",
        "SMTP_CIRCUIT_COOLDOWN_SECONDS": "30"}), clock=clock)
    assert send(client, {"to": "a@example.com"}).status_code == 500  # opens the circuit
    doomed_redis.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["circuit"]["ok"] is False and body["checks"]["store"] == {"ok": False, "detail": OPEN_REASON}


def test_smtp_check_names_the_tls_mode_but_not_the_server(settings, client):
    check = client.get("/readyz").get_json()["checks"]["smtp"]
    assert check == {"ok": True, "detail": "configured (STARTTLS)"}
    assert settings.smtp_host not in json.dumps(check) and str(settings.smtp_port) not in json.dumps(check)


# --- draining


def test_draining_worker_is_not_ready(client):
    from herald_smtp.web.health import start_draining

    assert client.get("/readyz").status_code == 200
    start_draining(client.application)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["shutdown"] == {"ok": False, "detail": "draining after SIGTERM"}
    assert all(body["checks"][name]["ok"] for name in ("store", "smtp", "circuit"))
    assert client.get("/healthz").status_code == 200  # liveness is not readiness
    assert send(client, {"to": "a@example.com"}).status_code == 200  # requests in flight still finish


def _get(conn: http.client.HTTPConnection, path: str):
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, json.loads(response.read()), (response.getheader("Connection") or "").lower()


@pytest.mark.timeout(60)
def test_sigterm_makes_readyz_503_while_in_flight_sends_finish(tmp_path, smtp):
    """gunicorn, on SIGTERM, accepts no new connection but answers a request arriving on a
    kept-alive one for a moment ("Connection: close"); that answer must say not ready."""
    smtp.inject("message", delay=3.0)  # the send stalls 3 s at the end of DATA
    env = smtp_env(smtp) | {"WEB_CONCURRENCY": "1", "WEB_THREADS": "4"}
    service = HeraldProcess(tmp_path, env).start()
    try:
        answer: list[tuple] = []
        sender = threading.Thread(target=lambda: answer.append(post(service.url, {"to": "slow@example.com"})))
        sender.start()
        deadline = time.monotonic() + 5
        while smtp.fault_hits["message"] == 0:  # the send is in flight, waiting for the 250
            assert time.monotonic() < deadline, "the send never reached the end of DATA"
            time.sleep(0.02)

        probe = http.client.HTTPConnection(LOCALHOST, service.port, timeout=5)
        status, body, connection = _get(probe, "/readyz")
        assert (status, body["status"]) == (200, "ready") and connection != "close"  # kept alive

        service.terminate()
        # Until the worker has the signal it keeps the connection alive; the first answer it
        # gives while stopping carries "Connection: close".
        deadline = time.monotonic() + 1.5
        while True:
            status, body, connection = _get(probe, "/readyz")
            if connection == "close":
                break
            assert time.monotonic() < deadline, "the worker never answered as a stopping worker"
        probe.close()
        assert status == 503, body
        assert body["status"] == "not_ready"
        assert body["checks"]["shutdown"] == {"ok": False, "detail": "draining after SIGTERM"}

        with pytest.raises(OSError):  # a new connection (a kubelet probe) gets no answer at all
            urllib.request.urlopen(service.url + "/readyz", timeout=1).read()

        sender.join(timeout=15)
        assert answer and answer[0][0] == 200  # the send in flight still finished
    finally:
        exit_code = service.stop()
    assert exit_code == 0
    assert len(smtp.wait_for(1)) == 1
    assert "draining: SIGTERM received; /readyz answers 503 until this worker exits" in service.log_text()


# --- several relays (SMTP_FALLBACK_URLS): ready while one circuit is not open


def test_ready_while_one_relay_circuit_is_not_open_and_the_body_names_every_relay(server_factory, make_client,
                                                                                clock):
    primary, fallback = server_factory(), server_factory()
    primary.inject("ehlo", reply="421 4.3.2 busy")
    env = smtp_env(primary) | {"SMTP_FALLBACK_URLS": f"smtp+plain://{fallback.host}:{fallback.port}",
                               "SMTP_CIRCUIT_THRESHOLD": "1", "SMTP_CIRCUIT_COOLDOWN_SECONDS": "30",
                               "SMTP_RETRIES": "0"}
    client = make_client(settings_from(env), clock=clock)
    assert send(client, {"to": "a@example.com"}).status_code == 200  # the primary's circuit opens, the fallback sends
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["status"] == "ready"
    check = response.get_json()["checks"]["circuit"]
    # The first cooldown is 2 s; it grows towards SMTP_CIRCUIT_COOLDOWN_SECONDS while the relay stays down.
    assert check == {"ok": True, "detail": f"127.0.0.1:{primary.port} open, retry in 2s, "
                                           f"127.0.0.1:{fallback.port} closed"}

    fallback.inject("ehlo", reply="421 4.3.2 busy")
    clock.advance(31)  # the primary's trial fails again, then the fallback's: every circuit open
    assert send(client, {"to": "a@example.com"}).status_code == 500
    response = client.get("/readyz")
    assert response.status_code == 503
    check = response.get_json()["checks"]["circuit"]
    assert check["ok"] is False
    assert f"127.0.0.1:{primary.port} open" in check["detail"] and f"127.0.0.1:{fallback.port} open" in check["detail"]
