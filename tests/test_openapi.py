"""docs/openapi.yaml is a valid OpenAPI document and it is the app's real contract.

How the contract check works:
- The document is validated with openapi-spec-validator.
- Each test drives the real app (Flask test client, real SMTP test server) into
  a list of situations. Every response goes through `Contract.check`, which
  finds the documented operation (or `x-generic-responses` for unknown paths
  and methods), and asserts that the status is documented there, that its
  `error_code` is one of the response's `x-error-codes`, that the JSON body
  validates against the response schema (with `$ref` resolved and `allOf`
  merged here, by `resolve`, then checked with jsonschema's Draft 2020-12
  validator, the dialect of OpenAPI 3.1, reading `pattern` as ECMA-262 does),
  that the body has no field the document does not list, and that the
  documented headers are there.
- Each (path, method, status, error_code) the app produced is recorded; every
  combination the document lists must have been produced, except the few in
  UNREACHABLE, each with its reason.
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate

from herald_smtp.bounces.recorder import Recorder
from herald_smtp.config import settings_from
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.idempotency.store import open_store
from herald_smtp.metrics import BounceMetrics
from herald_smtp.outcomes import Outcome
from tests.support.client import API_KEY, fingerprint_of, smtp_env, with_changes
from tests.support.net import free_port
from tests.support.scripted_server import ScriptedServer
from tests.support.dsn import notification

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
GENERIC = ("*", "*")  # the operation key of `x-generic-responses`

# Documented combinations that no test can produce in this build, and why.
UNREACHABLE: set = set()
# Note: ("/v1/send", "post", 500, "internal_error") needs a bug. It is produced below by one
# stand-in: the mailer's `send` replaced by a function raising RuntimeError.


def load_document() -> dict:
    return yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))


DOC = load_document()


# --- $ref resolution and allOf merging (the documents' schemas are small and acyclic)


def _lookup(ref: str):
    assert ref.startswith("#/"), f"only local $ref are used in {DOC_PATH.name}: {ref}"
    node = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(node):
    """The node with every $ref replaced by its target and every allOf merged into one schema."""
    if isinstance(node, list):
        return [resolve(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        target = _lookup(node["$ref"])
        return resolve(_merge([target, siblings]) if siblings else target)
    resolved = {key: resolve(value) for key, value in node.items()}
    if "allOf" in resolved:
        parts = resolved.pop("allOf")
        resolved = _merge(parts + [resolved])
    return resolved


def _merge(parts: list[dict]) -> dict:
    merged: dict = {}
    for part in parts:
        part = resolve(part)
        for key, value in part.items():
            if key == "properties":
                props = merged.setdefault("properties", {})
                for name, schema in value.items():
                    props[name] = {**props.get(name, {}), **schema}
            elif key == "required" and isinstance(value, list):
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            else:
                merged[key] = value
    return merged


def strict(schema):
    """The schema, with objects closed: a field the app sends must be in the document.

    The document itself leaves objects open (clients must tolerate extra fields);
    this test holds the app to what the document lists.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def ecma_pattern(pattern: str) -> re.Pattern:
    """`pattern` as ECMA-262 reads it, for Python's `re`, in the subset the document uses.

    Outside a character class, `$` is the end of the string (Python's also matches before a final newline)
    and `.` is any character but a line terminator (Python's only excludes LF).
    """
    out, in_class, i = [], False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        elif char == ".":
            char = r"[^\n\r\u2028\u2029]"
        out.append(char)
        i += 1
    return re.compile("".join(out))


def _ecma_pattern_keyword(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 (OpenAPI 3.1's dialect) with `pattern` read as ECMA-262, as the document means it.
EcmaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern_keyword})


def schema_errors(schema: dict, instance) -> list[str]:
    validator = EcmaValidator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(instance)]


def operation_responses(op_key: tuple[str, str]) -> dict:
    if op_key == GENERIC:
        return DOC["x-generic-responses"]["responses"]
    path, method = op_key
    return DOC["paths"][path][method]["responses"]


def documented_operations() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return {(path, method) for path, item in DOC["paths"].items() for method in item if method in methods}


def documented_path(path: str) -> str | None:
    """The document's path template that `path` is an instance of (`/v1/messages/{message_id}`), if any."""
    for template in DOC["paths"]:
        # A parameter may span slashes, as Flask's <path:...> converter reads it.
        parts = re.split(r"(\{[^}]+\})", template)
        if re.fullmatch("".join(".+" if part.startswith("{") else re.escape(part) for part in parts), path):
            return template
    return None


def error_codes(response: dict) -> list[str | None]:
    """The error codes a documented response can carry; [None] for a non-error response."""
    return list(response.get("x-error-codes", {})) or [None]


def documented_combinations(op_keys) -> set[tuple]:
    combos = set()
    for op_key in op_keys:
        for status, response in operation_responses(op_key).items():
            for code in error_codes(resolve(response)):
                combos.add((*op_key, int(status), code))
    return combos


# --- the recorder


class Contract:
    def __init__(self):
        self.produced: set[tuple] = set()

    def request(self, client, method: str, path: str, **kwargs):
        response = client.open(path, method=method.upper(), **kwargs)
        self.check(response, method, path)
        return response

    def send(self, client, body, headers=None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body)
        return self.request(client, "post", "/v1/send", data=data, content_type="application/json",
                            headers=headers or {})

    def check(self, response, method: str, path: str) -> None:
        method = method.lower()
        template = documented_path(path)
        op_key = (template, method) if template is not None and method in DOC["paths"][template] else GENERIC
        text = response.get_data(as_text=True)
        where = f"{method.upper()} {path} -> {response.status_code} {text[:300]!r}"
        responses = operation_responses(op_key)
        assert str(response.status_code) in responses, \
            f"{where}: status {response.status_code} is not documented for {op_key} in {DOC_PATH.name}"
        documented = resolve(responses[str(response.status_code)])

        content = documented.get("content")
        code = None
        if content is None:  # a response without content (204)
            assert text == "", f"{where}: a body where the document has none"
        elif response.mimetype not in content:
            raise AssertionError(f"{where}: content type {response.mimetype} not documented")
        elif response.mimetype == "application/json":
            body = response.get_json()
            errors = schema_errors(strict(content["application/json"]["schema"]), body)
            assert not errors, f"{where}: body does not match the documented schema: {errors}"
            if "x-error-codes" in documented:
                code = body["error_code"]
                assert code in documented["x-error-codes"], f"{where}: error_code {code} not in x-error-codes"
        else:
            assert isinstance(text, str) and text, f"{where}: empty body"

        headers = documented.get("headers", {})
        for name, header in headers.items():
            if header.get("required"):
                assert name in response.headers, f"{where}: documented header {name} missing"
            if name in response.headers:
                errors = schema_errors(header["schema"], _header_value(header["schema"], response.headers[name]))
                assert not errors, f"{where}: header {name}: {errors}"
        for name in ("X-Request-ID", "Retry-After", "Idempotent-Replayed", "Allow"):
            if name in response.headers:
                assert name in headers, f"{where}: header {name} is sent but not documented for this response"
        self.produced.add((*op_key, response.status_code, code))

    def assert_all_produced(self, op_keys) -> None:
        documented = documented_combinations(op_keys)
        owned_unreachable = {c for c in UNREACHABLE if (c[0], c[1]) in op_keys}
        assert owned_unreachable <= documented, f"UNREACHABLE lists undocumented combinations: " \
                                                f"{owned_unreachable - documented}"
        assert not (owned_unreachable & self.produced), \
            f"produced, so not unreachable; remove from UNREACHABLE: {owned_unreachable & self.produced}"
        missing = documented - self.produced - owned_unreachable
        assert not missing, f"documented but never produced by the app in this test: {sorted(missing, key=str)}"
        extra = {c for c in self.produced if (c[0], c[1]) in op_keys} - documented
        assert not extra, f"produced but not documented: {extra}"


def _header_value(schema: dict, value: str):
    if schema.get("type") == "integer":
        return int(value) if value.isdigit() else value
    return value


@pytest.fixture
def contract() -> Contract:
    return Contract()


def request_schema() -> dict:
    return resolve(DOC["paths"]["/v1/send"]["post"]["requestBody"]["content"]["application/json"]["schema"])


# --- the document itself


def test_document_is_valid_openapi():
    validate(load_document())


def test_each_response_lists_its_error_codes_once_in_x_error_codes_and_in_the_schema_enum():
    responses = [(op, status, r) for op in documented_operations() | {GENERIC}
                 for status, r in operation_responses(op).items()]
    for op, status, response in responses:
        response = resolve(response)
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        enum = schema.get("properties", {}).get("error_code", {}).get("enum")
        if "x-error-codes" in response:
            assert enum == list(response["x-error-codes"]), (op, status)
        else:
            assert enum is None, f"{op} {status}: an error_code enum without x-error-codes"


def test_error_code_enum_and_every_outcome_of_the_app_are_documented():
    enum = set(resolve(DOC["components"]["schemas"]["ErrorCode"])["enum"])
    assert enum == {o.error_code for o in Outcome if o.error_code}
    documented = documented_combinations(documented_operations() | {GENERIC})
    statuses_and_codes = {(status, code) for _, _, status, code in documented}
    for outcome in Outcome:
        assert (outcome.http_status, outcome.error_code) in statuses_and_codes, \
            f"outcome {outcome.value}: {outcome.http_status} {outcome.error_code} is documented nowhere"


def test_every_documented_operation_has_a_contract_test():
    owned = set(CONTRACT_TESTS)
    assert owned == documented_operations() | {GENERIC}, "add the new operation to a contract test below"


ACCEPTED_BODIES = [
    {"to": "a@example.com"},
    {"to": "a@example.com", "channel": "email", "subject": "验证码", "body": "x", "params": {"code": "1"},
     "template": "otp", "locale": "zh-CN", "idempotency_key": "k-1", "timeout_seconds": 5, "unknown": [1]},
    # What Herald sends.
    {"channel": "email", "to": "li@example.com", "subject": "您的验证码",
     "body": "您的验证码是 482913，10 分钟内有效。", "locale": "zh-CN", "idempotency_key": "ch_3q2-7wAbCdEfGhIjKlMnOp"},
    {"to": "a@example.com", "timeout_seconds": 10.0},  # an integer, for JSON Schema and the service
    {"to": "a@example.com", "timeout_seconds": 10 ** 400},
    {"to": "a@example.com", "unknown": None},  # null is only refused in the fields the service reads
    {"to": "a@example.com", "idempotency_key": "".join(chr(c) for c in range(0x21, 0x7F))},
    {"to": "a@example.com", "idempotency_key": "k" * 256},
    {"to": "a@example.com", "subject": "", "body": "", "channel": ""},
    {"to": "a@example.com", "subject": "Code = 42? Yes, what?= now =?"},  # no encoded-word: `?=` before `=?`
    {"to": "a@example.com", "subject": "a=?b"},
    {"to": "a@example.com", "body": "line 1\r\nline 2\n\ttabbed\n"},
    {"to": "a@example.com", "params": {"code": "12\t34\n", "other": "\x00"}, "template": "\x00", "locale": "\x01"},
    {"to": "a@example.com", "body": "x", "params": {"code": ""}},
    {"to": "A.b-c+d_e!#$%&'*/=?^`{|}~@Sub.Example.COM"},
    {"to": "x@a.b-c"},
    {"to": "x@a.1c"},
    {"to": "x@test.test"},
    {"to": "x@local.example"},
    {"to": "x@xn--p1ai.xn--p1ai"},
    {"to": "x@" + "b" * 63 + ".com"},
    {"to": "a" * 64 + "@example.com"},
    {"to": "x@" + ("b" * 62 + ".") * 3 + "com"},
    {"to": "=?a@b.com"},  # "=?" alone is no encoded-word
    {"to": "user@例子.中国"},
    {"to": "user@例子。中国"},
    {"to": "josé@example.com"},
]


@pytest.mark.parametrize("body", ACCEPTED_BODIES)
def test_request_schema_accepts_what_the_app_sends(client, smtp, body):
    assert not schema_errors(request_schema(), body)
    response = client.post("/v1/send", json=body)
    assert response.status_code == 200, response.get_json()


REJECTED_BODIES = [
    {},
    {"to": 5},
    {"to": "a@example.com", "subject": 1},
    {"to": "a@example.com", "params": []},
    {"to": "a@example.com", "params": {"code": 123}},
    {"to": "a@example.com", "timeout_seconds": 1.5},
    {"to": "a@example.com", "timeout_seconds": True},
    {"to": "a@example.com", "timeout_seconds": 0},
    {"to": "a@example.com", "timeout_seconds": 0.0},
    {"to": "a@example.com", "timeout_seconds": "10"},
    {"to": "a@example.com", "channel": "sms"},
    {"to": "a@example.com", "idempotency_key": ""},
    {"to": "a@example.com", "idempotency_key": "has space"},
    {"to": "a@example.com", "idempotency_key": "tab\there"},
    {"to": "a@example.com", "idempotency_key": "x" * 257},
    {"to": "a@example.com", "idempotency_key": "ключ"},
    {"to": "a@example.com", "idempotency_key": "caf\u00e9"},
    {"to": "a@example.com", "idempotency_key": "del\x7f"},
    {"to": "a@example.com", "idempotency_key": "k\n"},  # a final newline: Python's `$` alone would let it by
    # null, for every field the service reads
    *({"to": "a@example.com", field: None} for field in
      ("channel", "subject", "body", "params", "template", "locale", "idempotency_key", "timeout_seconds")),
    {"to": None},
    # subject: control and line-break characters, encoded-words
    *({"to": "a@example.com", "subject": f"Hi{c}there"} for c in ("\r\n", "\n", "\x00", "\x0b", "\x1f", "\x7f",
                                                                    "\x85", "\u2028", "\u2029", "\t")),
    {"to": "a@example.com", "subject": "Hi\n"},
    {"to": "a@example.com", "subject": "=?utf-8?q?Your_code?="},
    {"to": "a@example.com", "subject": "Code =?utf-8*en?Q?x?= here"},
    # body and params.code: control characters other than tab and line breaks
    *({"to": "a@example.com", "body": f"code{c}1"} for c in ("\x00", "\x08", "\x0b", "\x0c", "\x1b", "\x7f")),
    {"to": "a@example.com", "params": {"code": "12\x1b3"}},
    {"to": "a@example.com", "body": "x", "params": {"code": "12\x003"}},
    # to
    {"to": ""},
    {"to": "not-an-address"},
    {"to": "a@localhost"},
    {"to": "a@printer.local"},
    {"to": "a@x.home.ARPA"},
    {"to": "a@x.invalid"},
    {"to": "a@x.onion"},
    {"to": "a@x.localhost"},
    {"to": "a@b.C1"},
    {"to": "a@192.0.2.1"},
    {"to": "a@-bad.example.com"},
    {"to": "a@bad-.example.com"},
    {"to": "a@ab--cd.example.com"},
    {"to": "a@x_y.com"},
    {"to": "a@b..com"},
    {"to": "a@b.com."},
    {"to": ".a@example.com"},
    {"to": "a.@example.com"},
    {"to": "a..b@example.com"},
    {"to": "a b@example.com"},
    {"to": '"a b"@example.com'},
    {"to": "a@[192.0.2.1]"},
    {"to": "Alice <a@example.com>"},
    {"to": "a@example.com, b@example.com"},
    {"to": "a@example.com\r\nBcc: x@example.com"},
    {"to": "a@example.com\n"},
    {"to": "a" * 65 + "@example.com"},
    {"to": "x@" + "b" * 64 + ".com"},
    {"to": "x@" + ("b" * 62 + ".") * 4 + "com"},  # over 254 characters
    {"to": "=?utf-8?q?ceo=40bank=2Ecom?=@evil.example"},
    {"to": "a=?x?=b@example.com"},
]


@pytest.mark.parametrize("body", REJECTED_BODIES)
def test_request_schema_rejects_what_the_app_rejects(client, smtp, body):
    assert schema_errors(request_schema(), body), f"{body} passes the documented request schema"
    response = client.post("/v1/send", json=body)
    assert response.status_code == 400, response.get_json()
    assert smtp.messages == []


def test_patterns_are_read_as_ecma_262():
    # The document's patterns end in `$`; ECMA-262 reads it as the end of the string, Python's `re` alone would
    # also match before a final newline.
    assert re.search("^[a]+$", "aa\n") and not ecma_pattern("^[a]+$").search("aa\n")
    assert not ecma_pattern("^[$.]+$").search("x") and ecma_pattern("^[$.]+$").search("$.")
    assert re.search("a.b", "a\u2028b") and not ecma_pattern("a.b").search("a\u2028b")
    assert ecma_pattern(r"^a\.b$").search("a.b") and not ecma_pattern(r"^a\.b$").search("axb")


# --- the app against the document


def test_send_healthz_and_generic_answers_match_the_document(contract, client, settings, make_client, smtp):
    c = contract
    # 200, then the same key again: 200 replayed, nothing sent.
    payload = {"to": "alice@example.com", "params": {"code": "424242"}}
    first = c.send(client, payload, {"Idempotency-Key": "oa-ok", "X-Request-ID": "oa-rid-1"})
    assert first.status_code == 200 and first.headers["X-Request-ID"] == "oa-rid-1"
    assert not schema_errors(request_schema(), payload)
    again = c.send(client, payload, {"Idempotency-Key": "oa-ok"})
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == first.get_json()
    assert len(smtp.wait_for(1)) == 1

    # 400 invalid_request and invalid_destination (from the body, and from the server's RCPT reply).
    assert c.send(client, {"to": 5}).status_code == 400
    assert c.send(client, None, raw=b"[1, 2]").status_code == 400
    assert c.send(client, {}).get_json()["error_code"] == "invalid_destination"
    smtp.reject_rcpt = {"gone@example.com"}
    rejected = c.send(client, {"to": "gone@example.com", "idempotency_key": "oa-gone"})
    assert rejected.get_json()["error_code"] == "invalid_destination"
    replayed = c.send(client, {"to": "gone@example.com", "idempotency_key": "oa-gone"})
    assert replayed.status_code == 400 and replayed.headers.get("Idempotent-Replayed") == "true"
    smtp.reset_faults()

    # 401: a key is configured and the request has none, or a wrong one.
    keyed = make_client(with_changes(settings, api_keys=(API_KEY, "next-key")))
    assert c.send(keyed, {"to": "a@example.com"}).status_code == 401
    assert c.send(keyed, {"to": "a@example.com"}, {"X-API-Key": "wrong"}).status_code == 401
    assert c.send(keyed, {"to": "a@example.com"}, {"X-API-Key": "next-key"}).status_code == 200

    # 409: the key with another payload; and the key still in flight after the wait.
    other = c.send(client, payload | {"params": {"code": "000000"}}, {"Idempotency-Key": "oa-ok"})
    assert other.status_code == 409 and other.get_json()["retryable"] is False
    store = MemoryStore()
    waiting = make_client(with_changes(settings, idempotency_wait_seconds=0.3), store=store)
    stuck = {"to": "a@example.com", "idempotency_key": "oa-stuck"}
    store.reserve("oa-stuck", fingerprint_of(stuck), 60)  # another worker holds it and never finishes
    in_flight = c.send(waiting, stuck)
    assert in_flight.status_code == 409 and in_flight.get_json()["retryable"] is True

    # 413: the body is over MAX_REQUEST_BYTES.
    small = make_client(with_changes(settings, max_request_bytes=2048))
    assert c.send(small, {"to": "a@example.com", "body": "x" * 4096}).status_code == 413

    # 500 send_failed: a transient 4xx (retryable, released) and a 5xx refusal (kept, replayed).
    smtp.inject("rcpt", reply="451 4.3.0 try later")
    transient = c.send(client, {"to": "a@example.com"})
    assert transient.status_code == 500 and transient.get_json()["retryable"] is True
    smtp.reset_faults()
    smtp.inject("message", reply="554 5.7.1 rejected as spam")
    refused = c.send(client, {"to": "a@example.com", "idempotency_key": "oa-spam"})
    assert refused.get_json()["error_code"] == "send_failed" and refused.get_json()["retryable"] is False
    assert c.send(client, {"to": "a@example.com", "idempotency_key": "oa-spam"}).headers.get(
        "Idempotent-Replayed") == "true"
    smtp.reset_faults()

    # 500 internal_error. The one stand-in of this test: no real part of the app can be made
    # to hit a bug, so the mailer's send is replaced by a function that raises, as a bug would.
    buggy = make_client(settings)

    def broken_send(*args, **kwargs):
        raise RuntimeError("stand-in for a bug")

    buggy.application.extensions["herald_smtp"].send.mailer.send = broken_send
    bug = c.send(buggy, {"to": "a@example.com"})
    assert bug.status_code == 500 and bug.get_json()["error_code"] == "internal_error"

    # 503 provider_down: SMTP not configured; the circuit breaker open; the store down in closed mode.
    assert c.send(make_client(settings_from({})), {"to": "a@example.com"}).status_code == 503
    breaking = make_client(with_changes(settings, smtp_retries=0, smtp_circuit_threshold=1))
    smtp.inject("ehlo", reply="421 4.3.2 service not available")
    assert c.send(breaking, {"to": "a@example.com"}).status_code == 500
    circuit = c.send(breaking, {"to": "a@example.com"})
    assert circuit.status_code == 503 and "circuit" in circuit.get_json()["error_message"]
    smtp.reset_faults()
    closed = make_client(with_changes(settings, redis_url=_dead_redis_url(), idempotency_failure_mode="closed"))
    store_down = c.send(closed, {"to": "a@example.com", "idempotency_key": "oa-closed"})
    assert store_down.status_code == 503 and "idempotency store" in store_down.get_json()["error_message"]

    # GET /healthz.
    assert c.request(client, "get", "/healthz").status_code == 200

    # Generic: unknown paths and unsupported methods.
    assert c.request(client, "get", "/nope").status_code == 404
    assert c.request(client, "post", "/v1/sendx", json={}).status_code == 404
    assert c.request(client, "get", "/v1/send").status_code == 405
    assert c.request(client, "options", "/v1/send").status_code == 405
    assert c.request(client, "put", "/healthz").status_code == 405

    time.sleep(0.1)
    # Mails: the first send, the key-rotation send; nothing else got through.
    assert len(smtp.messages) == 2

    # 429: RATE_LIMIT_PER_RECIPIENT used up (after the count above: it sends a mail of its own).
    limited = make_client(settings_from(smtp_env(smtp) | {"RATE_LIMIT_PER_RECIPIENT": "1/60s"}))
    assert c.send(limited, {"to": "rl@example.com"}).status_code == 200
    over = c.send(limited, {"to": "rl@example.com"})
    assert over.status_code == 429 and over.headers["Retry-After"].isdigit()

    c.assert_all_produced({("/v1/send", "post"), ("/healthz", "get"), GENERIC})


def test_readyz_matches_the_document(contract, client, settings, make_client, smtp):
    c = contract
    ready = c.request(client, "get", "/readyz") if _has_route(client, "/readyz") else None
    assert ready is not None, "GET /readyz is not implemented in this build yet (issue 4, the lead's part)"
    assert ready.status_code == 200

    not_configured = c.request(make_client(settings_from({})), "get", "/readyz")
    assert not_configured.status_code == 503
    assert not_configured.get_json()["checks"]["smtp"]["ok"] is False

    # The store down: 200 `degraded` in open mode (the default), 503 in closed mode.
    degraded = c.request(make_client(with_changes(settings, redis_url=_dead_redis_url())), "get", "/readyz")
    assert degraded.status_code == 200 and degraded.get_json()["status"] == "degraded"
    assert degraded.get_json()["checks"]["store"]["ok"] is False
    closed = make_client(with_changes(settings, redis_url=_dead_redis_url(), idempotency_failure_mode="closed"))
    store_down = c.request(closed, "get", "/readyz")
    assert store_down.status_code == 503 and store_down.get_json()["checks"]["store"]["ok"] is False

    from herald_smtp.web.health import start_draining  # what gunicorn's SIGTERM sets in each worker

    draining = make_client(settings)
    start_draining(draining.application)
    drained = c.request(draining, "get", "/readyz")
    assert drained.status_code == 503 and drained.get_json()["checks"]["shutdown"]["ok"] is False

    breaking = make_client(with_changes(settings, smtp_retries=0, smtp_circuit_threshold=1))
    smtp.inject("ehlo", reply="421 4.3.2 service not available")
    assert breaking.post("/v1/send", json={"to": "a@example.com"}).status_code == 500
    circuit_open = c.request(breaking, "get", "/readyz")
    assert circuit_open.status_code == 503 and circuit_open.get_json()["checks"]["circuit"]["ok"] is False
    smtp.reset_faults()

    c.assert_all_produced({("/readyz", "get")})


def test_metrics_matches_the_document(contract, client, smtp):
    assert _has_route(client, "/metrics"), \
        "GET /metrics is not implemented in this build yet (issue 4, the lead's part)"
    client.post("/v1/send", json={"to": "a@example.com"})
    response = contract.request(client, "get", "/metrics")
    assert response.status_code == 200
    assert "herald_smtp_" in response.get_data(as_text=True)
    contract.assert_all_produced({("/metrics", "get")})


def test_message_status_matches_the_document(contract, client, settings, make_client, smtp, redis_url):
    c = contract
    # 200 after a real send: a relay whose reply names no queue id (the nulls of the record).
    sent = c.send(client, {"to": "alice@example.com", "params": {"code": "424242"}})
    assert sent.status_code == 200 and "relay_queue_id" not in sent.get_json()
    message_id = sent.get_json()["message_id"]
    plain = c.request(client, "get", f"/v1/messages/{message_id}")
    assert plain.status_code == 200
    assert plain.get_json()["status"] == "accepted" and plain.get_json()["relay_queue_id"] is None

    # 200 through Redis, from a relay that names its queue id: in the send's answer and in the record.
    with ScriptedServer(script={"dot": [b"250 2.0.0 Ok: queued as 4XyZ1234AbC\r\n"]}) as relay:
        queued = make_client(settings_from({"SMTP_HOST": relay.host, "SMTP_PORT": str(relay.port),
                                            "SMTP_FROM": "noreply@herald.test", "SMTP_USE_STARTTLS": "false",
                                            "REDIS_URL": redis_url}))
        answer = c.send(queued, {"to": "bob@example.com"})
    assert answer.status_code == 200 and answer.get_json()["relay_queue_id"] == "4XyZ1234AbC"
    record = c.request(queued, "get", f"/v1/messages/{answer.get_json()['message_id']}").get_json()
    assert record["relay_queue_id"] == "4XyZ1234AbC" and record["reply"]["enhanced_code"] == "2.0.0"

    # 200 with events: a hard bounce read back (the bounce reader's recorder on the same store); the
    # suppression it adds matches the document too.
    bounce_settings = settings_from({"REDIS_URL": redis_url})
    recorder = Recorder(bounce_settings, open_store(bounce_settings.redis_target, "herald-smtp:"), BounceMetrics())
    recorder.record(notification(answer.get_json()["message_id"], "bob@example.com"))
    bounced = c.request(queued, "get", f"/v1/messages/{answer.get_json()['message_id']}").get_json()
    assert bounced["status"] == "bounced" and bounced["events"][0]["status"] == "5.1.1"
    assert c.request(queued, "get", "/v1/suppressions/bob@example.com").get_json()["source"] == "bounce"

    # 404: a well-formed id nobody sent, and an id herald-smtp never writes.
    assert c.request(client, "get", "/v1/messages/" + "0" * 32 + "@example.com").status_code == 404
    assert c.request(client, "get", "/v1/messages/not-ours").status_code == 404

    # 401: a key is configured and the request has none, or a wrong one.
    keyed = make_client(with_changes(settings, api_keys=(API_KEY,)))
    assert c.request(keyed, "get", f"/v1/messages/{message_id}").status_code == 401
    assert c.request(keyed, "get", f"/v1/messages/{message_id}", headers={"X-API-Key": "wrong"}).status_code == 401

    # 503: the store cannot answer (in open mode too: there is nowhere else to read the record).
    dead = make_client(with_changes(settings, redis_url=_dead_redis_url()))
    store_down = c.request(dead, "get", f"/v1/messages/{message_id}")
    assert store_down.status_code == 503 and store_down.headers["Retry-After"].isdigit()

    c.assert_all_produced({("/v1/messages/{message_id}", "get")})


def test_suppressions_match_the_document(contract, client, settings, make_client, smtp, redis_url):
    c = contract
    on_redis = make_client(with_changes(settings, redis_url=redis_url))
    # A real suppression: the relay refuses the recipient with 550 5.1.1, the next send is refused at once.
    smtp.inject("rcpt", reply="550 5.1.1 <jhon@gmial.com>: Recipient address rejected: User unknown", times=1)
    assert c.send(on_redis, {"to": "jhon@gmial.com"}).status_code == 400
    tried = len(smtp.commands)
    suppressed = c.send(on_redis, {"to": "jhon@gmial.com", "idempotency_key": "oa-suppressed"})
    assert suppressed.status_code == 400 and "suppressed since" in suppressed.get_json()["error_message"]
    assert len(smtp.commands) == tried  # no SMTP traffic

    # 200 with the entry, any case; 204 when lifted; then 404 for both.
    path = "/v1/suppressions/Jhon@GMIAL.com"
    entry = c.request(on_redis, "get", path)
    assert entry.status_code == 200
    assert entry.get_json()["recipient"] == "j***@gmial.com" and entry.get_json()["reason"]["code"] == 550
    lifted = c.request(on_redis, "delete", path)
    assert lifted.status_code == 204 and lifted.get_data() == b""
    assert c.request(on_redis, "get", path).status_code == 404
    assert c.request(on_redis, "delete", path).status_code == 404

    # 400: not an address.
    assert c.request(on_redis, "get", "/v1/suppressions/not-an-address").status_code == 400
    assert c.request(on_redis, "delete", "/v1/suppressions/a@b..com").status_code == 400

    # 401: a key is configured and the request has none, or a wrong one.
    keyed = make_client(with_changes(settings, api_keys=(API_KEY,)))
    assert c.request(keyed, "get", path).status_code == 401
    assert c.request(keyed, "delete", path, headers={"X-API-Key": "wrong"}).status_code == 401

    # 503: the store cannot answer (in open mode too: there is nowhere else to read the list).
    dead = make_client(with_changes(settings, redis_url=_dead_redis_url()))
    for method in ("get", "delete"):
        store_down = c.request(dead, method, path)
        assert store_down.status_code == 503 and store_down.headers["Retry-After"].isdigit()

    c.assert_all_produced({("/v1/suppressions/{address}", "get"), ("/v1/suppressions/{address}", "delete")})


# Which test above proves each documented operation against the app.
CONTRACT_TESTS = {
    ("/v1/send", "post"): test_send_healthz_and_generic_answers_match_the_document,
    ("/healthz", "get"): test_send_healthz_and_generic_answers_match_the_document,
    GENERIC: test_send_healthz_and_generic_answers_match_the_document,
    ("/readyz", "get"): test_readyz_matches_the_document,
    ("/metrics", "get"): test_metrics_matches_the_document,
    ("/v1/messages/{message_id}", "get"): test_message_status_matches_the_document,
    ("/v1/suppressions/{address}", "get"): test_suppressions_match_the_document,
    ("/v1/suppressions/{address}", "delete"): test_suppressions_match_the_document,
}


# --- helpers


def _dead_redis_url() -> str:
    """A Redis URL where nothing listens: every store call fails at once (connection refused)."""
    return f"redis://127.0.0.1:{free_port()}/0"


def _has_route(client, path: str) -> bool:
    return any(rule.rule == path for rule in client.application.url_map.iter_rules())
