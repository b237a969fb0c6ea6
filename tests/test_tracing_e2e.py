"""Tracing end to end: the real service under gunicorn exports over OTLP/HTTP to a receiver in the test.

The caller's W3C traceparent is continued: every span of the send is in its
trace, and the request span's parent is the caller's span. The spans still
batched when the service stops gracefully are flushed (worker_exit), so the
test stops the service before it looks.
"""

from __future__ import annotations

import json
import secrets

import pytest

from tests.support.client import post, smtp_env
from tests.support.herald_process import HeraldProcess
from tests.support.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver():
    with OtlpReceiver() as receiver:
        yield receiver


def test_the_service_continues_the_callers_trace_and_exports_it_over_otlp_http(tmp_path, smtp, receiver):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    env = smtp_env(smtp) | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                            "OTEL_SERVICE_NAME": "herald-smtp-e2e",
                            # Long: the spans must arrive through the flush at shutdown, not the timer.
                            "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    service = HeraldProcess(tmp_path, env).start()
    try:
        status, body, headers = post(service.url, {"to": "alice@example.com", "params": {"code": "424242"}},
                                     {"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Request-ID": "e2e-trace-1"})
        assert status == 200, body
        assert headers["X-Request-ID"] == "e2e-trace-1"
        status, _, _ = post(service.url, {"to": "bob@example.com"})  # no traceparent: a trace of its own
        assert status == 200
    finally:
        assert service.stop() == 0
    log = service.log_text()
    assert len(smtp.wait_for(2)) == 2

    received = receiver.spans()
    assert received, f"no spans arrived at {receiver.paths}; service log:\n{log[-3000:]}"
    assert set(receiver.paths) == {"/v1/traces"}
    assert {resource["service.name"] for resource, _ in received} == {"herald-smtp-e2e"}
    ours = [span for _, span in received if span.trace_id.hex() == trace_id]
    names = {span.name for span in ours}
    assert {"POST /v1/send", "smtp.send", "smtp.attempt", "smtp.connect", "smtp.tls", "smtp.auth", "smtp.mail",
            "smtp.rcpt", "smtp.data", "smtp.dot"} <= names
    request = next(span for span in ours if span.name == "POST /v1/send")
    assert request.parent_span_id.hex() == parent_id
    attributes = {kv.key: kv.value for kv in request.attributes}
    assert attributes["herald.request_id"].string_value == "e2e-trace-1"
    assert attributes["herald.outcome"].string_value == "sent"
    other = [span for _, span in received if span.trace_id.hex() != trace_id and span.name == "POST /v1/send"]
    assert len(other) == 1 and not other[0].parent_span_id

    # The log lines of the request carry its trace id; the startup line says tracing is on.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("trace_id") == trace_id and line.get("message") == "send ok" for line in lines), log[-3000:]
    startup = next(line for line in lines if line.get("message") == "starting herald-smtp")
    assert startup["config"]["tracing"] == f"on, to {receiver.endpoint}"
