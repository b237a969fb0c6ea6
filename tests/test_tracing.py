"""Tracing (herald_smtp/tracing.py): the span tree of each send, what the spans carry and never carry.

The SDK's in-memory exporter collects the spans of requests against the real
SMTP test server and real Redis; test_tracing_e2e.py exports over OTLP/HTTP
from the real service.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from herald_smtp import tracing
from herald_smtp.config import ConfigError, settings_from
from herald_smtp.logs import ContextFilter
from tests.support.client import API_KEY, SMTP_PASSWORD, send, smtp_env, with_changes
from tests.support.net import free_port

PHASE_SPANS = ("smtp.connect", "smtp.tls", "smtp.auth", "smtp.mail", "smtp.rcpt", "smtp.data", "smtp.dot")
REQUEST_SPAN = "POST /v1/send"


@pytest.fixture(scope="module")
def _exporter():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def spans(_exporter):
    """Tracing on for this test (create apps after it starts); the exporter, empty."""
    provider, exporter = _exporter
    exporter.clear()
    tracing.use(provider)
    yield exporter
    tracing.use(None)


def by_name(exporter, name):
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter, name):
    found = by_name(exporter, name)
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def parent_of(exporter, span):
    ids = {s.context.span_id: s for s in exporter.get_finished_spans()}
    return ids.get(span.parent.span_id) if span.parent else None


def names(exporter):
    return [s.name for s in exporter.get_finished_spans()]


def test_a_success_is_a_tree_of_request_send_attempt_and_phases(spans, settings, make_client, smtp):
    client = make_client(settings)
    response = send(client, {"to": "alice@example.com", "params": {"code": "424242"}},
                    headers={"X-Request-ID": "req-trace-1"})
    assert response.status_code == 200
    request = one(spans, REQUEST_SPAN)
    assert request.status.status_code is StatusCode.UNSET
    assert request.attributes["herald.outcome"] == "sent"
    assert request.attributes["herald.error_code"] == ""
    assert request.attributes["herald.request_id"] == "req-trace-1"
    assert request.attributes["herald.to"] == "a***@example.com"
    send_span = one(spans, "smtp.send")
    assert parent_of(spans, send_span) is request
    attempt = one(spans, "smtp.attempt")
    assert parent_of(spans, attempt) is send_span
    assert attempt.attributes["herald.smtp.attempt"] == 1
    assert attempt.attributes["herald.smtp.relay"] == f"{smtp.host}:{smtp.port}"
    assert attempt.attributes["herald.smtp.connection_reused"] is False
    codes = {}
    for name in PHASE_SPANS:
        phase = one(spans, name)
        assert parent_of(spans, phase) is attempt, name
        assert phase.status.status_code is StatusCode.UNSET, name
        assert phase.attributes["herald.smtp.relay"] == attempt.attributes["herald.smtp.relay"]
        assert phase.attributes["herald.smtp.attempt"] == 1
        assert phase.attributes["herald.smtp.connection_reused"] is False
        codes[name] = phase.attributes["herald.smtp.reply_code"]
    assert codes == {"smtp.connect": 250, "smtp.tls": 250, "smtp.auth": 235, "smtp.mail": 250, "smtp.rcpt": 250,
                     "smtp.data": 354, "smtp.dot": 250}
    assert one(spans, "smtp.mail").attributes["herald.smtp.pipelined"] is True
    # The phases come in order.
    starts = [one(spans, name).start_time for name in PHASE_SPANS]
    assert starts == sorted(starts)


def test_a_reused_connection_has_no_connect_tls_or_auth_span(spans, settings, make_client, smtp):
    client = make_client(settings)
    assert send(client, {"to": "a@example.com"}).status_code == 200
    spans.clear()
    assert send(client, {"to": "b@example.com"}).status_code == 200
    assert not {"smtp.connect", "smtp.tls", "smtp.auth"} & set(names(spans))
    assert one(spans, "smtp.attempt").attributes["herald.smtp.connection_reused"] is True
    assert one(spans, "smtp.rcpt").attributes["herald.smtp.connection_reused"] is True


def test_without_pipelining_each_phase_is_its_own_exchange(spans, make_client, server_factory):
    server = server_factory(pipelining=False)
    client = make_client(settings_from(smtp_env(server)))
    assert send(client, {"to": "a@example.com"}).status_code == 200
    for name in ("smtp.mail", "smtp.rcpt", "smtp.data", "smtp.dot"):
        assert "herald.smtp.pipelined" not in one(spans, name).attributes
    assert one(spans, "smtp.data").attributes["herald.smtp.reply_code"] == 354
    assert "smtp.tls" not in names(spans)  # a plain server


def test_a_retry_is_a_second_attempt_span(spans, settings, make_client, smtp):
    smtp.inject("rcpt", reply="451 4.3.0 try later", times=1)
    response = send(make_client(settings), {"to": "a@example.com"})
    assert response.status_code == 200
    first, second = sorted(by_name(spans, "smtp.attempt"), key=lambda s: s.start_time)
    assert (first.attributes["herald.smtp.attempt"], second.attributes["herald.smtp.attempt"]) == (1, 2)
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["herald.outcome"] == "smtp_transient"
    assert second.status.status_code is StatusCode.UNSET
    assert second.attributes["herald.outcome"] == "sent"
    refused, accepted = sorted(by_name(spans, "smtp.rcpt"), key=lambda s: s.start_time)
    assert refused.attributes["herald.smtp.reply_code"] == 451
    assert refused.status.status_code is StatusCode.ERROR
    assert parent_of(spans, refused) is first
    assert accepted.attributes["herald.smtp.reply_code"] == 250
    assert parent_of(spans, accepted) is second
    # The retry reused the connection after RSET: one connect.
    assert len(by_name(spans, "smtp.connect")) == 1
    assert second.attributes["herald.smtp.connection_reused"] is True


def _closed_port_settings(settings, smtp):
    return with_changes(settings, smtp_port=free_port())


FAILURES = {
    # failing phase span: (how to make it fail, reply code on that span or None, HTTP status)
    "smtp.connect": (lambda settings, smtp: with_changes(settings, smtp_port=free_port()), None, None),
    "smtp.tls": (lambda settings, smtp: with_changes(settings, smtp_tls_ca_file=""), None, 500),
    "smtp.auth": (lambda settings, smtp: with_changes(settings, smtp_password="wrong-password"), 535, 500),
    "smtp.mail": (lambda settings, smtp: smtp.inject("mail", reply="550 5.7.1 sender refused") or settings, 550, None),
    "smtp.rcpt": (lambda settings, smtp: smtp.inject("rcpt", reply="550 5.1.1 no such user") or settings, 550, 400),
    "smtp.data": (lambda settings, smtp: smtp.inject("data", reply="554 5.6.0 no data") or settings, 554, None),
    "smtp.dot": (lambda settings, smtp: smtp.inject("message", reply="554 5.7.1 spam") or settings, 554, None),
}


@pytest.mark.parametrize("failing", list(FAILURES))
def test_a_failure_marks_its_phase_the_attempt_and_the_request(spans, settings, make_client, smtp, failing):
    arrange, code, status = FAILURES[failing]
    settings = arrange(with_changes(settings, smtp_retries=0), smtp)
    response = send(make_client(settings), {"to": "a@example.com"})
    assert response.status_code >= 400
    if status is not None:
        assert response.status_code == status
    phase = one(spans, failing)
    assert phase.status.status_code is StatusCode.ERROR
    if code is not None:
        assert phase.attributes["herald.smtp.reply_code"] == code
    later = PHASE_SPANS[PHASE_SPANS.index(failing) + 1:]
    if failing in ("smtp.mail", "smtp.rcpt"):
        later = ("smtp.dot",)  # pipelined: every envelope reply is read, the content is never sent
    for name in later:
        assert by_name(spans, name) == [], name
    for name in PHASE_SPANS[:PHASE_SPANS.index(failing)]:
        if name == "smtp.tls" and failing == "smtp.connect":
            continue
        assert one(spans, name).status.status_code is StatusCode.UNSET, name
    assert one(spans, "smtp.attempt").status.status_code is StatusCode.ERROR
    assert one(spans, "smtp.send").status.status_code is StatusCode.ERROR
    request = one(spans, REQUEST_SPAN)
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["herald.error_code"] == response.get_json()["error_code"]
    assert request.attributes["herald.outcome"] != "sent"


def _redis_settings(settings, redis_url):
    return with_changes(settings, redis_url=redis_url)


def test_a_replay_has_a_claim_span_and_no_smtp(spans, settings, make_client, smtp, redis_url, redis_client):
    client = make_client(settings_from(smtp_env(smtp) | {"REDIS_URL": redis_url}))
    body = {"to": "a@example.com", "idempotency_key": "replay-trace-1"}
    assert send(client, body).status_code == 200
    claim = one(spans, "idempotency.claim")
    assert claim.attributes["herald.idempotency.operation"] == "reserve"
    assert claim.attributes["herald.idempotency.turn"] == "owned"
    commit = one(spans, "idempotency.commit")
    assert parent_of(spans, commit).name == "smtp.dot"  # just before the final dot
    assert commit.attributes["herald.idempotency.stage"] == "committed"
    record = one(spans, "idempotency.record")
    assert record.attributes["herald.idempotency.operation"] == "finish"
    assert record.attributes["herald.idempotency.recorded"] is True
    # The store's commands are spans too, their arguments sanitized.
    redis_spans = [s for s in spans.get_finished_spans() if s.attributes.get("db.system") == "redis"]
    assert redis_spans
    assert any(parent_of(spans, s) is claim for s in redis_spans)
    spans.clear()

    response = send(client, body)
    assert response.status_code == 200 and response.headers["Idempotent-Replayed"] == "true"
    assert one(spans, "idempotency.claim").attributes["herald.idempotency.turn"] == "replay"
    assert by_name(spans, "smtp.send") == []
    request = one(spans, REQUEST_SPAN)
    assert request.attributes["herald.outcome"] == "replayed"
    assert request.attributes["herald.replayed"] is True
    assert request.status.status_code is StatusCode.UNSET


def test_the_request_status_is_error_exactly_when_the_answer_is_not_ok(spans, settings, make_client, smtp):
    client = make_client(settings)
    assert send(client, {"to": "a@example.com"}).status_code == 200
    assert send(client, {"to": "not an address"}).status_code == 400
    smtp.inject("mail", reply="451 4.3.0 busy")
    assert send(make_client(with_changes(settings, smtp_retries=0)), {"to": "a@example.com"}).status_code >= 500
    assert client.get("/healthz").status_code == 200
    ok, invalid, unavailable = sorted(by_name(spans, REQUEST_SPAN), key=lambda s: s.start_time)
    assert ok.status.status_code is StatusCode.UNSET
    # The Flask instrumentation leaves a 4xx UNSET on a server span; the answer decides here.
    assert invalid.status.status_code is StatusCode.ERROR
    assert invalid.attributes["herald.error_code"] == "invalid_destination"
    assert invalid.attributes["http.status_code"] == 400
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.attributes["herald.error_code"] == "send_failed"
    assert one(spans, "GET /healthz").status.status_code is StatusCode.UNSET


def test_no_secret_recipient_subject_body_code_or_key_in_any_span(spans, smtp, make_client, redis_url, redis_client):
    recipient = "zebra.quillfeather@leakcheck-example.org"
    secrets = {
        "recipient": recipient, "local part": "zebra.quillfeather",
        "subject": "Subject-Secret-7f3k", "body": "Body-Secret-q9w8", "code": "583920",
        "idempotency key": "IdemKey-Secret-x1y2", "API key": API_KEY, "SMTP password": SMTP_PASSWORD,
    }
    env = smtp_env(smtp) | {"REDIS_URL": redis_url, "API_KEY": API_KEY, "IDEMPOTENCY_SECRET": "Fp-Secret-m4n5"}
    secrets["idempotency secret"] = "Fp-Secret-m4n5"
    client = make_client(settings_from(env))
    payload = {"to": recipient, "subject": secrets["subject"], "body": secrets["body"] + " {code}",
               "params": {"code": secrets["code"]}, "idempotency_key": secrets["idempotency key"]}
    headers = {"X-API-Key": API_KEY}
    assert send(client, payload, headers).status_code == 200
    assert send(client, payload, headers).headers["Idempotent-Replayed"] == "true"
    smtp.reject_rcpt = {recipient}  # the refusal echoes the address: its text must be masked
    refused = dict(payload, idempotency_key="IdemKey-Secret-other")
    secrets["second key"] = "IdemKey-Secret-other"
    assert send(client, refused, headers).status_code == 400
    exported = []
    for span in spans.get_finished_spans():
        exported.append(span.name)
        exported.append(json.dumps(dict(span.attributes), default=str))
        exported.append(span.status.description or "")
        exported.append(json.dumps(dict(span.resource.attributes), default=str))
        for event in span.events:
            exported.append(event.name + json.dumps(dict(event.attributes), default=str))
    text = "\n".join(exported)
    assert "rcpt" in text and "a***@" not in text  # the spans were collected
    assert "z***@leakcheck-example.org" in text
    for what, secret in secrets.items():
        assert secret.lower() not in text.lower(), what


def test_log_records_carry_the_trace_and_span_id_while_a_span_is_active(spans):
    record = logging.LogRecord("herald_smtp", logging.INFO, __file__, 1, "inside", None, None)
    with tracing.span("test.span"):
        ContextFilter().filter(record)
    span = one(spans, "test.span")
    assert record.trace_id == format(span.context.trace_id, "032x")
    assert record.span_id == format(span.context.span_id, "016x")
    outside = logging.LogRecord("herald_smtp", logging.INFO, __file__, 1, "outside", None, None)
    ContextFilter().filter(outside)
    assert not hasattr(outside, "trace_id")


def test_tracing_off_is_the_shared_noop_and_a_request_imports_nothing_of_opentelemetry(smtp):
    """In a fresh interpreter (this one has the SDK loaded): a real send, with no OTEL_* set.

    redis-py (7+) imports the OpenTelemetry metrics API and SDK at its own import when they are installed
    (its observability stays off unless initialised): that is startup, not the request path. A request
    imports nothing more, and nothing of tracing (SDK traces, exporter, instrumentations) is loaded.
    """
    program = """
import json, sys
from herald_smtp import tracing
from herald_smtp.config import settings_from
from herald_smtp.web.app import create_app
settings = settings_from(json.loads(sys.argv[1]))
assert not settings.tracing_enabled
tracing.setup(settings)
client = create_app(settings).test_client()
before = {name for name in sys.modules if name.startswith("opentelemetry")}
response = client.post("/v1/send", json={"to": "a@example.com", "idempotency_key": "k1"})
assert response.status_code == 200, response.get_data(as_text=True)
assert tracing.span("x") is tracing.span("y") is tracing.NOOP
assert tracing.log_ids() is None
loaded = {name for name in sys.modules if name.startswith("opentelemetry")}
tracing_modules = sorted(name for name in loaded if name.startswith(
    ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation")))
print(json.dumps({"new": sorted(loaded - before), "tracing": tracing_modules}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", program, json.dumps(smtp_env(smtp))], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"new": [], "tracing": []}
    assert len(smtp.wait_for(1)) == 1


def test_tracing_is_decided_by_the_otel_variables():
    assert not settings_from({}).tracing_enabled
    on = settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert on.tracing_enabled and on.otel_service_name == "herald-smtp"
    assert on.redacted()["tracing"] == "on, to http://collector:4318"
    traces = settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/v1/traces"})
    assert traces.otel_endpoint == "http://b:4318/v1/traces"
    assert not settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                              "OTEL_SDK_DISABLED": "true"}).tracing_enabled
    assert settings_from({"OTEL_SERVICE_NAME": "mail-eu"}).otel_service_name == "mail-eu"
    assert settings_from({}).redacted()["tracing"] == "off"


def test_only_the_http_protobuf_exporter_is_accepted():
    with pytest.raises(ConfigError) as caught:
        settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    message = str(caught.value)
    assert message.startswith("OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf")
    assert "\n" not in message
    assert settings_from({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}).otel_protocol == "http/protobuf"


def test_tracing_on_without_the_packages_is_a_one_line_startup_error(monkeypatch):
    import herald_smtp.config.loading as config

    monkeypatch.setattr(config, "_OTEL_MODULES", ("opentelemetry.not_installed_here",))
    with pytest.raises(ConfigError) as caught:
        settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    message = str(caught.value)
    assert message.startswith("OTEL_EXPORTER_OTLP_ENDPOINT:")
    assert "pip install 'herald-smtp[otel]'" in message and "\n" not in message
    settings_from({})  # off: nothing is looked up


def test_otel_variables_in_dotenv_are_ignored(tmp_path, monkeypatch):
    from herald_smtp.config import load_settings

    dotenv = tmp_path / ".env"
    dotenv.write_text("OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318\nOTEL_SERVICE_NAME=from-dotenv\n")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME",
                 "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(dotenv_path=str(dotenv))
    assert not settings.tracing_enabled and settings.otel_service_name == "herald-smtp"


@pytest.mark.parametrize("failing, fault", [("smtp.mail", ("mail", "550 5.7.1 sender refused")),
                                            ("smtp.rcpt", ("rcpt", "550 5.1.1 no such user")),
                                            ("smtp.data", ("data", "554 5.6.0 no data"))])
def test_without_pipelining_a_refusal_ends_the_envelope_at_its_phase(spans, make_client, server_factory,
                                                                      failing, fault):
    server = server_factory(pipelining=False)
    server.inject(fault[0], reply=fault[1])
    response = send(make_client(settings_from(smtp_env(server) | {"SMTP_RETRIES": "0"})), {"to": "a@example.com"})
    assert response.status_code >= 400
    phase = one(spans, failing)
    assert phase.status.status_code is StatusCode.ERROR
    assert phase.attributes["herald.smtp.reply_code"] == int(fault[1][:3])
    for name in PHASE_SPANS[PHASE_SPANS.index(failing) + 1:]:
        assert by_name(spans, name) == [], name
    assert one(spans, REQUEST_SPAN).status.status_code is StatusCode.ERROR


def test_implicit_tls_is_a_tls_span_inside_connect(spans, make_client, server_factory):
    server = server_factory(implicit_tls=True, auth=("u", "p"))
    assert send(make_client(settings_from(smtp_env(server))), {"to": "a@example.com"}).status_code == 200
    tls = one(spans, "smtp.tls")
    assert parent_of(spans, tls).name == "smtp.connect"
    assert tls.status.status_code is StatusCode.UNSET
    assert one(spans, "smtp.auth").attributes["herald.smtp.reply_code"] == 235


def test_a_failover_is_an_event_and_an_attempt_on_the_next_relay(spans, make_client, server_factory):
    fallback = server_factory()
    closed = free_port()
    env = smtp_env(fallback) | {"SMTP_PORT": str(closed), "SMTP_RETRIES": "0",
                                "SMTP_FALLBACK_URLS": f"smtp+plain://{fallback.host}:{fallback.port}"}
    assert send(make_client(settings_from(env)), {"to": "a@example.com"}).status_code == 200
    send_span = one(spans, "smtp.send")
    assert [event.name for event in send_span.events] == ["failover"]
    assert send_span.events[0].attributes["herald.smtp.next_relay"] == f"{fallback.host}:{fallback.port}"
    first, second = sorted(by_name(spans, "smtp.attempt"), key=lambda s: s.start_time)
    assert first.attributes["herald.smtp.relay"] == f"{fallback.host}:{closed}"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["herald.smtp.relay"] == f"{fallback.host}:{fallback.port}"
    assert second.status.status_code is StatusCode.UNSET
    assert send_span.status.status_code is StatusCode.UNSET
    assert send_span.attributes["herald.smtp.relay"] == f"{fallback.host}:{fallback.port}"
