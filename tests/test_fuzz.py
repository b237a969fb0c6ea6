"""The live service from the outside: malformed HTTP on a raw socket, and a schema-driven fuzz run.

One real gunicorn (`herald-smtp serve`, one worker, the in-process store so that
replays work) on 127.0.0.1, sending to the real STARTTLS + AUTH SMTP server of
conftest, with an API key configured.

- Malformed HTTP: what gunicorn's own parser refuses gets gunicorn's fixed HTML
  page (no hook or setting changes it; docs/openapi.yaml `x-malformed-http`
  lists each answer); what it lets through, the app answers in JSON.
- The fuzz run: schemathesis reads docs/openapi.yaml and drives every operation
  with positive and negative data (examples, coverage and fuzzing phases), then
  its state machine follows the `ReplaySend` link of a 200 to send the same
  request again, and the `MessageStatus` link to read the mail's status record
  (200, `accepted`). Every response must be documented: status, content type, body
  schema and headers; never a 5xx; negative data must be refused; a 405 must
  carry `Allow`; without the API key the send must be refused. Bounded by
  MAX_EXAMPLES per operation and per state machine run, MAX_STEPS per scenario
  (about 15 s in all).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import hypothesis
import pytest
import schemathesis
import yaml
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from herald_smtp.sending.request import InvalidRequest
from herald_smtp.tools.serve import LIMIT_REQUEST_FIELD_SIZE, LIMIT_REQUEST_FIELDS, LIMIT_REQUEST_LINE
from tests.support.client import API_KEY, exchange, fingerprint_of, smtp_env
from tests.support.herald_process import HeraldProcess

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
MAX_EXAMPLES = 25
MAX_STEPS = 6
SEED = 20261201


@pytest.fixture(scope="module")
def herald(tmp_path_factory, _smtp_session):
    env = smtp_env(_smtp_session) | {"WEB_CONCURRENCY": "1", "WEB_THREADS": "4", "API_KEY": API_KEY,
                                     "IDEMPOTENCY_WAIT_SECONDS": "3"}
    with HeraldProcess(tmp_path_factory.mktemp("fuzz"), env) as service:
        yield service


# --- malformed HTTP


def request_bytes(*header_lines: bytes, method: bytes = b"GET", target: bytes = b"/healthz",
                  body: bytes = b"") -> bytes:
    return b"\r\n".join([method + b" " + target + b" HTTP/1.1", b"Host: herald-smtp", *header_lines,
                         b"Connection: close", b"", b""]) + body


# (what, request, status gunicorn answers): each in docs/openapi.yaml `x-malformed-http`.
GUNICORN_REFUSES = [
    ("a NUL byte in a header value", request_bytes(b"X-Request-ID: a\x00b"), 400),
    ("a control character in a header value", request_bytes(b"Idempotency-Key: k\x01"), 400),
    ("a header name with a space", request_bytes(b"X Api Key: k"), 400),
    ("a request line that is not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("an invalid method", request_bytes(method=b"G@T"), 400),
    ("an HTTP version gunicorn does not speak", request_bytes().replace(b"HTTP/1.1", b"HTTP/2.0", 1), 400),
    ("a Transfer-Encoding gunicorn does not accept",
     request_bytes(b"Transfer-Encoding: gzip", method=b"POST", target=b"/v1/send"), 400),
    ("a malformed Content-Length", request_bytes(b"Content-Length: 1x", method=b"POST", target=b"/v1/send"), 400),
    ("a header line over the field size limit",
     request_bytes(b"X-Big: " + b"a" * LIMIT_REQUEST_FIELD_SIZE), 431),
    ("more header fields than allowed",
     request_bytes(*(b"X-F%d: v" % i for i in range(LIMIT_REQUEST_FIELDS + 1))), 431),
    ("a request line over its limit", request_bytes(target=b"/healthz?" + b"q" * LIMIT_REQUEST_LINE), 414),
    ("an Expect other than 100-continue",
     request_bytes(b"Expect: teapot", b"Content-Length: 2", method=b"POST", target=b"/v1/send", body=b"{}"), 417),
]


@pytest.mark.parametrize("request_data, status", [c[1:] for c in GUNICORN_REFUSES],
                         ids=[c[0] for c in GUNICORN_REFUSES])
def test_what_gunicorn_refuses_gets_its_fixed_page_without_a_request_id(herald, _smtp_session, request_data, status):
    mails, warnings = len(_smtp_session.messages), herald.log_text().count("Invalid request from ip=")
    answer, headers, body = exchange(herald.port, request_data)
    # gunicorn writes this page itself (workers/base.py handle_error); no hook or setting changes it.
    assert answer == status, body
    assert headers["content-type"] == "text/html" and headers["connection"] == "close"
    assert "x-request-id" not in headers
    assert len(_smtp_session.messages) == mails
    assert herald.log_text().count("Invalid request from ip=") == warnings + 1  # gunicorn's WARNING line


def test_the_document_lists_what_gunicorn_answers_with_the_limits_it_is_given():
    malformed = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))["x-malformed-http"]["answers"]
    assert {int(status) for status in malformed} == {status for *_, status in GUNICORN_REFUSES}
    assert str(LIMIT_REQUEST_LINE) in malformed["414"]
    assert str(LIMIT_REQUEST_FIELD_SIZE) in malformed["431"] and str(LIMIT_REQUEST_FIELDS) in malformed["431"]


def test_a_header_just_under_the_limits_reaches_the_app_and_gets_json(herald):
    line = b"X-Big: " + b"a" * (LIMIT_REQUEST_FIELD_SIZE - len(b"X-Big: ") - 2)
    answer, headers, body = exchange(herald.port, request_bytes(line, b"X-Request-ID: under-the-limit"))
    assert answer == 200 and headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "under-the-limit"


def test_non_ascii_header_bytes_reach_the_app_and_get_json(herald, _smtp_session):
    mails = len(_smtp_session.messages)
    payload = json.dumps({"to": "a@example.com", "idempotency_key": "ключ"}).encode()
    answer, headers, body = exchange(herald.port, request_bytes(
        b"Content-Type: application/json", b"X-API-Key: " + API_KEY.encode(),
        "Idempotency-Key: ключ".encode("utf-8"), b"Content-Length: %d" % len(payload),
        method=b"POST", target=b"/v1/send", body=payload))
    assert answer == 400 and headers["content-type"] == "application/json" and headers["x-request-id"]
    error = json.loads(body)
    assert error["error_code"] == "invalid_request" and "visible ASCII" in error["error_message"]
    assert len(_smtp_session.messages) == mails


@pytest.mark.parametrize("chunks", [
    b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hex
    b"2\r\n{}XX0\r\n\r\n",  # a chunk without its CRLF
    b"2;\x00\r\n{}\r\n0\r\n\r\n",  # a NUL in a chunk extension
])
def test_a_malformed_chunked_body_is_a_json_400_not_a_500(herald, _smtp_session, chunks):
    # gunicorn parses a chunked body only while the app reads it, so the app sees its ParseException.
    mails = len(_smtp_session.messages)
    answer, headers, body = exchange(herald.port, request_bytes(
        b"Content-Type: application/json", b"X-API-Key: " + API_KEY.encode(), b"Transfer-Encoding: chunked",
        method=b"POST", target=b"/v1/send", body=chunks))
    assert answer == 400, body
    assert headers["content-type"] == "application/json" and headers["x-request-id"]
    error = json.loads(body)
    assert error["error_code"] == "invalid_request" and "malformed" in error["error_message"]
    assert len(_smtp_session.messages) == mails


# --- the schema-driven fuzz run

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
]

CONFIG = schemathesis.Config.from_dict({
    "seed": SEED,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
    "auth": {"openapi": {"ApiKey": {"api_key": API_KEY}}},
    "checks": {
        # Valid data is accepted: 200, or 409 when a generated key was already used with another payload.
        "positive_data_acceptance": {"expected-statuses": [200, 409]},
    },
    "operations": [{
        # A well-formed message_id that no send answered is unknown: 404 is the right answer to valid data.
        "include-operation-id": "messageStatus",
        "checks": {"positive_data_acceptance": {"expected-statuses": [200, 404]}},
    }, {
        # A string the schema allows may still be no address (400), and is rarely suppressed (404).
        "include-operation-id": "getSuppression",
        "checks": {"positive_data_acceptance": {"expected-statuses": [200, 400, 404]}},
    }, {
        "include-operation-id": "liftSuppression",
        "checks": {"positive_data_acceptance": {"expected-statuses": [204, 400, 404]}},
    }],
    # The stateful phase replays sends, so it draws valid data; the phases above have the negative data.
    "phases": {"stateful": {"max-steps": MAX_STEPS, "generation": {"mode": "positive"}}},
})
SCHEMA = schemathesis.openapi.from_path(DOC_PATH, config=CONFIG)


def agree_on_the_key(case):
    """Positive data keeps the one rule no schema can state: a header key and a body key, when both, are equal."""
    body, headers = case.body, case.headers
    if (case.meta is not None and case.meta.generation.mode.is_positive and isinstance(body, dict)
            and isinstance(body.get("idempotency_key"), str) and headers and "Idempotency-Key" in headers):
        headers["Idempotency-Key"] = body["idempotency_key"]
    return case


@SCHEMA.hook
def map_case(context, case):
    return agree_on_the_key(case)


@SCHEMA.parametrize()
def test_every_operation_answers_as_the_document_says(case, herald):
    case.call_and_validate(base_url=herald.url, checks=CHECKS)



def effective_key(case) -> str | None:
    body = case.body if isinstance(case.body, dict) else {}
    key = body.get("idempotency_key")
    return key if isinstance(key, str) else (case.headers or {}).get("Idempotency-Key")


def message_of(case) -> str | None:
    """The service's fingerprint of the message the case sends (None if the body does not parse)."""
    try:
        return fingerprint_of(case.body)
    except (InvalidRequest, TypeError, ValueError):
        return None


def test_the_state_machine_replays_a_send_through_its_link_and_sends_nothing_more(herald, _smtp_session):
    SCHEMA.config.update(base_url=herald.url)
    replays, conflicts, statuses = [], [], []

    class ReplayingMachine(SCHEMA.as_state_machine()):
        def setup(self):
            self._sent = {}  # case id -> (key, fingerprint, answer) of each 200 of POST /v1/send

        def before_call(self, case):
            agree_on_the_key(case)

        def step(self, input):
            mails = len(_smtp_session.messages)
            output = super().step(input)  # calls the service and runs the checks of the config
            response, case = output.response, output.case
            parent = self._sent.get(input.transition.parent_id) if input.transition is not None else None
            key = effective_key(case)
            # The link is not always applied whole (schemathesis varies what it carries over): a step that
            # keeps the parent's key is a replay when the message is the same, and a conflict when it is not.
            if parent is not None and "ReplaySend" in input.transition.id and key is not None and key == parent[0]:
                if message_of(case) == parent[1]:
                    assert response.status_code == 200, response.text
                    assert response.headers.get("idempotent-replayed") == ["true"], response.headers
                    assert response.json() == parent[2], (parent[2], response.json())
                    replays.append(key)
                else:
                    assert response.status_code == 409, response.text
                    assert response.json()["error_code"] == "idempotency_conflict"
                    conflicts.append(key)
                assert len(_smtp_session.messages) == mails, "a replay or a conflict sent a mail"
            if (parent is not None and "MessageStatus" in input.transition.id
                    and unquote((case.path_parameters or {}).get("message_id", "")) == parent[2]["message_id"]):
                # The status of a mail this run sent (when the link was applied): that very record, accepted.
                assert response.status_code == 200, response.text
                assert response.json()["message_id"] == parent[2]["message_id"]
                assert response.json()["status"] == "accepted"
                statuses.append(parent[2]["message_id"])
            if response.status_code == 200 and case.operation.label == "POST /v1/send":
                self._sent[case.id] = (key, message_of(case), response.json())
            return output

    ReplayingMachine.run(settings=hypothesis.settings(
        max_examples=MAX_EXAMPLES, stateful_step_count=MAX_STEPS, deadline=None, database=None, derandomize=True,
        phases=[hypothesis.Phase.generate], suppress_health_check=list(hypothesis.HealthCheck)))
    assert replays, "the state machine never replayed a keyed send through the ReplaySend link"
    assert statuses, "the state machine never read a sent mail's status through the MessageStatus link"
