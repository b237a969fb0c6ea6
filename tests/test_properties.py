"""Property-based tests of POST /v1/send: any JSON value, any header values.

The app runs in-process (one app per test, built from the conftest settings)
and sends to the real STARTTLS + AUTH SMTP server, with an API key configured.
The properties:

- whatever the body and the headers, the answer is JSON with `ok`, and its
  status is a success or a documented 4xx (a 500/503 only as `send_failed` or
  `provider_down` from the SMTP side, which a healthy test server never gives);
- a refusal sends nothing, a 200 sends exactly one mail (a replay none);
- the parser and docs/openapi.yaml's request schema agree: a body the service
  accepts passes the schema, and for ASCII addresses a body that passes the
  schema is accepted;
- an idempotency key is refused exactly when it is not 1-256 visible ASCII
  characters, in the body or in the header, and "differ" only for two good keys.

Bounded by max_examples (about 15 s in all).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from herald_smtp.sending.request import InvalidRequest, parse_send_request
from herald_smtp.web.app import create_app
from tests.support.client import API_KEY, with_changes
from tests.test_openapi import DOC, ecma_pattern, request_schema, resolve, schema_errors

FIELDS = ["to", "channel", "subject", "body", "params", "template", "locale", "idempotency_key", "timeout_seconds"]
ERROR_CODES = set(resolve(DOC["components"]["schemas"]["ErrorCode"])["enum"])
# What any request may get from a healthy service: a success or a 4xx the document lists.
CLIENT_STATUSES = {200, 400, 401, 409, 413, 429}
# 5xx only from the SMTP side (with a healthy test server, none is expected).
SMTP_SIDE = {500: "send_failed", 503: "provider_down"}
KEY = re.compile(r"[\x21-\x7e]{1,256}")

IN_PROCESS = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])
PARSER_ONLY = hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies


def json_values_of(floats: st.SearchStrategy) -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | floats | st.text(max_size=20)
    return st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)


# Any JSON value; json_values has NaN and infinities too, which json.dumps writes as NaN/Infinity (not JSON, so
# 400), and which JSON Schema, a schema for JSON values, cannot speak about.
json_values = json_values_of(st.floats())
finite_json_values = json_values_of(st.floats(allow_nan=False, allow_infinity=False))

ascii_atom = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6)
ascii_label = st.text(alphabet="abZ09-", min_size=1, max_size=6)
ascii_addresses = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}" if labels else f"{local}@{tld}",
    st.lists(ascii_atom, min_size=0, max_size=3).map(".".join) | ascii_atom,
    st.lists(ascii_label, max_size=3),
    st.sampled_from(["com", "test", "c", "1c", "b-c", "C1", "123", "local", "LOCALHOST", "arpa", "invalid",
                     "onion", "xn--p1ai", "xn--zz", "ab--c", "-x", "x-"]) | ascii_label,
)
odd_address_text = st.sampled_from(["", " ", "a", "@", "a@", "@b.com", "a@b", "a b@c.com", '"a"@b.com', "<a@b.com>",
                                    "a@b.com\n", "a@[1.2.3.4]", "=?x?=@b.com", "a=?b?=c@d.com", "a" * 65 + "@b.com",
                                    "a@" + "b" * 64 + ".com", "a@b..com", ".a@b.com", "a.@b.com", "a..b@c.com"])
good_recipients = st.sampled_from(["ok@example.com", "li@例子.中国", "josé@example.com", "user@例子。中国", "X@Y.test"])
recipients = st.one_of(good_recipients, good_recipients, ascii_addresses, odd_address_text, st.text(max_size=30))

subjects = st.text(max_size=30) | st.sampled_from(["", "验证码", "=?utf-8?q?x?=", "a=?b", "what?= now", "Hi\nthere",
                                                   "x\u2028y", "x\x85y", "tab\tbed"])
bodies_text = st.text(max_size=40) | st.sampled_from(["", "line\r\nline\n", "nul\x00", "esc\x1b", "\x7f"])
keys = (st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
        | st.sampled_from(["", " ", "k k", "ключ", "café", "k\t", "x" * 256, "x" * 257, "ch_3q2-7wAbCdEfGhIjKlMnOp"])
        | st.text(max_size=12))
timeouts = (st.integers(-2, 20) | st.floats(-2, 20) | st.sampled_from([10.0, 1.5, 0.0, 1e308, 10 ** 400])
            | st.booleans() | st.just("10"))
params = st.dictionaries(st.sampled_from(["code", "other"]) | st.text(max_size=5),
                         st.text(max_size=10) | st.sampled_from(["424242", "12\x003", "1\r\n2"]), max_size=3)

FIELD_VALUES = {
    "to": recipients,
    "channel": st.sampled_from(["", "email", "sms", "EMAIL"]),
    "subject": subjects,
    "body": bodies_text,
    "params": params,
    "template": st.text(max_size=10),
    "locale": st.text(max_size=10),
    "idempotency_key": keys,
    "timeout_seconds": timeouts,
}


def send_bodies_of(values: st.SearchStrategy) -> st.SearchStrategy:
    """Each known field absent, a plausible value or (one time in four) any JSON value at all, null included;
    `to` present three times in four; unknown fields too. About one body in five is valid."""
    field = {name: st.one_of(strategy, strategy, strategy, values) for name, strategy in FIELD_VALUES.items()}
    others = {name: strategy for name, strategy in field.items() if name != "to"}
    with_to = st.fixed_dictionaries({"to": field["to"]}, optional=others)
    without_to = st.fixed_dictionaries({}, optional=others)
    known = st.one_of(with_to, with_to, with_to, without_to)
    unknown = st.dictionaries(st.text(max_size=6).filter(lambda k: k not in FIELDS), values, max_size=2)
    return st.tuples(unknown, known).map(lambda parts: {**parts[0], **parts[1]})


send_bodies = send_bodies_of(json_values)
finite_send_bodies = send_bodies_of(finite_json_values)
SCHEMA = request_schema()

# Header values as an HTTP server hands them over: the bytes read as Latin-1 (so UTF-8 text arrives as its
# Latin-1 reading), only what gunicorn lets through (tab, visible ASCII and space, bytes 0x80-0xFF: it refuses
# other control characters before the app), surrounding spaces and tabs stripped.
WIRE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def on_the_wire(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


header_values = (st.text(alphabet=st.characters(codec="latin-1"), max_size=40)
                 | st.text(max_size=12).map(on_the_wire)).filter(WIRE.fullmatch).map(lambda v: v.strip(" \t"))
header_sets = st.fixed_dictionaries({
    # The right key three times in four (else wrong or absent: 401).
    "X-API-Key": st.one_of(st.just(API_KEY), st.just(API_KEY), st.just(API_KEY), header_values | st.just(None)),
}, optional={
    "Idempotency-Key": keys.map(on_the_wire).filter(WIRE.fullmatch).map(lambda v: v.strip(" \t")) | header_values,
    "X-Request-ID": st.sampled_from(["rid-1", "a" * 128, "a" * 129]) | header_values,
}).map(lambda headers: {name: value for name, value in headers.items() if value is not None})


def raw_json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def parses(raw: bytes, header_key: str | None = None) -> InvalidRequest | None:
    try:
        parse_send_request(raw, header_key)
        return None
    except InvalidRequest as exc:
        return exc


# --- the app


def check_answer(response) -> dict:
    assert response.is_json, response.get_data(as_text=True)[:300]
    answer = response.get_json()
    assert isinstance(answer, dict) and answer["ok"] is (response.status_code == 200), answer
    if response.status_code in SMTP_SIDE:
        assert answer["error_code"] == SMTP_SIDE[response.status_code], answer
    else:
        assert response.status_code in CLIENT_STATUSES, answer
    if not answer["ok"]:
        assert answer["error_code"] in ERROR_CODES and isinstance(answer["error_message"], str)
        assert isinstance(answer["retryable"], bool)
    assert response.headers["X-Request-ID"]
    return answer


def check_mails(response, smtp, before: int) -> None:
    sent = len(smtp.messages) - before
    if response.status_code == 200 and response.headers.get("Idempotent-Replayed") != "true":
        assert sent == 1, f"a 200 sent {sent} mails"
    else:
        assert sent == 0, f"{response.status_code} {response.get_json()} sent {sent} mails"


def test_any_json_body_with_any_headers_gets_a_json_answer_and_sends_only_on_200(settings, smtp):
    client = create_app(with_changes(settings, api_keys=(API_KEY,))).test_client()
    seen = Counter()

    @IN_PROCESS
    @given(body=send_bodies | json_values, headers=header_sets)
    def run(body, headers):
        before = len(smtp.messages)
        response = client.post("/v1/send", data=raw_json(body), content_type="application/json", headers=headers)
        answer = check_answer(response)
        check_mails(response, smtp, before)
        seen[response.status_code] += 1
        if headers.get("X-API-Key") != API_KEY:
            assert response.status_code == 401 and answer["error_code"] == "unauthorized"
        rid = headers.get("X-Request-ID", "")
        if re.fullmatch(r"[A-Za-z0-9._:/+=@-]{1,128}", rid):
            assert response.headers["X-Request-ID"] == rid
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
        if response.status_code == 200:
            assert answer["provider"] == "smtp" and answer["message_id"]

    run()
    assert seen[200] and seen[400] and seen[401], seen  # every branch above was taken


def test_any_bytes_as_a_body_get_a_json_answer_and_send_nothing(settings, smtp):
    client = create_app(settings).test_client()

    @IN_PROCESS
    @given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()[:-1]),
           content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]))
    def run(raw, content_type):
        before = len(smtp.messages)
        response = client.post("/v1/send", data=raw, content_type=content_type)
        answer = check_answer(response)
        # Random bytes may happen to be a JSON object such as {} (`to is required`).
        assert response.status_code == 400 and answer["error_code"] in ("invalid_request", "invalid_destination")
        check_mails(response, smtp, before)

    run()


def test_an_invalid_body_sends_nothing_and_a_valid_one_exactly_one_mail(settings, smtp):
    # The bodies the service refuses and accepts, side by side through the app: each refusal is a 400 that
    # sends nothing, each acceptance a 200 (or, for a reused key, a replay or a 409) that sends at most one.
    client = create_app(settings).test_client()
    seen = Counter()

    @IN_PROCESS
    @given(body=send_bodies)
    def run(body):
        raw = raw_json(body)
        refused = parses(raw)
        before = len(smtp.messages)
        response = client.post("/v1/send", data=raw, content_type="application/json")
        answer = check_answer(response)
        check_mails(response, smtp, before)
        seen[response.status_code] += 1
        if refused is not None:
            assert response.status_code == 400 and answer["error_message"] == refused.message
        else:
            assert response.status_code in (200, 409), answer

    run()
    assert seen[200] and seen[400], seen


# --- the parser against the document


@PARSER_ONLY
@given(body=finite_send_bodies)
def test_what_the_service_accepts_passes_the_documented_schema_and_for_ascii_the_reverse(body):
    errors = schema_errors(SCHEMA, body)
    refused = parses(raw_json(body))
    if refused is None:
        assert not errors, f"the service accepts {body!r}; the document refuses it: {errors}"
    elif not errors:
        # The document states every rule but the Unicode ones (IDNA and unsafe characters) of a non-ASCII
        # `to`, and of a Punycode label (found by hypothesis: 0@0.XN--A).
        to = body.get("to")
        assert isinstance(to, str) and (not to.isascii() or _has_punycode_label(to)), \
            f"the service refuses {body!r} ({refused.message}); the document accepts it"


def _has_punycode_label(to: str) -> bool:
    """A Punycode (xn--) label must also decode to valid IDNA, which no pattern states (the document says so)."""
    return bool(re.search(r"(?:^|[@.])xn--", to, re.IGNORECASE))


@PARSER_ONLY
@given(to=ascii_addresses | odd_address_text | st.from_regex(
    ecma_pattern(SCHEMA["properties"]["to"]["pattern"]), alphabet=st.characters(codec="ascii")))
def test_the_documented_to_rule_is_the_services_rule_for_ascii(to):
    documented = not schema_errors(SCHEMA, {"to": to})
    accepted = parses(raw_json({"to": to})) is None
    if _has_punycode_label(to) and documented and not accepted:
        return
    assert documented == accepted, f"{to!r}: document {'accepts' if documented else 'refuses'}, service " \
                                   f"{'accepts' if accepted else 'refuses'}"


@PARSER_ONLY
@given(body_key=st.none() | keys, header_key=st.none() | keys | header_values)
def test_a_key_is_refused_exactly_when_it_is_not_visible_ascii_and_differ_only_for_two_good_keys(body_key,
                                                                                                    header_key):
    body = {"to": "a@example.com"} | ({} if body_key is None else {"idempotency_key": body_key})
    refused = parses(raw_json(body), header_key)
    good = [k is None or bool(KEY.fullmatch(k)) for k in (body_key, header_key)]
    if not all(good):
        assert refused is not None and "visible ASCII" in refused.message
    elif body_key is not None and header_key is not None and body_key != header_key:
        assert refused is not None and "differ" in refused.message
    else:
        assert refused is None, refused.message
        assert parse_send_request(raw_json(body), header_key).idempotency_key == (body_key or header_key)
