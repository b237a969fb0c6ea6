"""POST /v1/send contract: fields, content resolution, the error table, headers.

The app runs in-process (Flask test client) but sends through the real
STARTTLS + AUTH SMTP server of conftest.
"""

from __future__ import annotations

import json

import pytest

from herald_smtp.config import settings_from
from herald_smtp.sending.request import DEFAULT_SUBJECT, NO_CODE_BODY, parse_send_request
from tests.support.client import API_KEY, assert_error, send, with_changes


# --- success and content


def test_send_delivers_mail_and_answers_with_its_message_id(client, smtp):
    response = send(client, {"to": "alice@example.com", "params": {"code": "424242"}})

    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True and body["provider"] == "smtp"
    [mail] = smtp.wait_for(1)
    assert mail.rcpt_tos == ["alice@example.com"]
    assert mail.mail_from == "noreply@herald.test"
    msg = mail.message
    assert msg["Message-ID"] == f"<{body['message_id']}>"
    assert msg["To"] == "alice@example.com"
    assert msg["From"].addresses[0].display_name == "Herald Test"
    assert msg["Subject"] == DEFAULT_SUBJECT
    assert msg["Date"] and msg["MIME-Version"] == "1.0"
    assert msg.get_content().strip() == "Your verification code is: 424242"
    assert smtp.auth_attempts >= 1


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"body": "Custom text", "params": {"code": "1"}}, "Custom text"),
        ({"body": "", "params": {"code": "987654"}}, "Your verification code is: 987654"),
        ({"params": {"other": "x"}}, NO_CODE_BODY),
        ({}, NO_CODE_BODY),
    ],
)
def test_content_resolution(client, smtp, fields, expected):
    response = send(client, {"to": "bob@example.com", **fields})

    assert response.status_code == 200, response.get_json()
    assert smtp.wait_for(1)[0].message.get_content().strip() == expected


def test_chinese_subject_and_body_arrive_intact(client, smtp):
    subject, body = "您的验证码", "您好！您的验证码是：七八九〇。请勿泄露。"
    response = send(client, {"to": "li@example.com", "subject": subject, "body": body})

    assert response.status_code == 200
    msg = smtp.wait_for(1)[0].message
    assert msg["Subject"] == subject
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "base64"  # 7-bit clean: no 8BITMIME needed
    assert msg.get_content().strip() == body
    # The raw header must be RFC 2047-encoded ASCII, not raw UTF-8.
    assert smtp.messages[0].raw.split(b"\r\n\r\n")[0].isascii()


def test_channel_email_and_unknown_fields_are_accepted(client, smtp):
    response = send(client, {"to": "c@example.com", "channel": "email", "template": "otp", "locale": "zh-CN",
                             "timeout_seconds": 5, "whatever": [1, 2]})
    assert response.status_code == 200
    assert len(smtp.wait_for(1)) == 1


# --- the error table


@pytest.mark.parametrize(
    "body, error_code, message_part",
    [
        ({}, "invalid_destination", "to is required"),
        ({"to": ""}, "invalid_destination", "to is required"),
        ({"to": "not-an-address"}, "invalid_destination", "not a valid email address"),
        ({"to": "a@localhost"}, "invalid_destination", "not a valid email address"),
        ({"to": "a@-bad.example.com"}, "invalid_destination", "not a valid email address"),
        ({"to": "a b@example.com"}, "invalid_destination", "not a valid email address"),
        ({"to": "Alice <a@example.com>"}, "invalid_destination", "not a valid email address"),
        ({"to": "a@example.com\r\nBcc: victim@example.com"}, "invalid_destination", "CR or LF"),
        ({"to": "a@example.com\nX: y"}, "invalid_destination", "CR or LF"),
        ({"to": "a@example.com", "subject": "Hi\r\nBcc: victim@example.com"}, "invalid_request", "CR or LF"),
        ({"to": "a@example.com", "subject": "Hi\nthere"}, "invalid_request", "CR or LF"),
        ({"to": "a@example.com", "subject": "Hi\u2028Bcc: x@example.com"}, "invalid_request", "CR or LF"),
        ({"to": "a@example.com", "subject": "Hi\x85there"}, "invalid_request", "CR or LF"),
        ({"to": "a@example.com", "subject": "Hi\x0bthere"}, "invalid_request", "CR or LF"),
        ({"to": "a@example.com", "subject": "Hi\x00there"}, "invalid_request", "CR or LF"),
        ({"to": "a@example.com", "body": "code\x00123"}, "invalid_request", "control characters"),
        ({"to": "a@example.com", "params": {"code": "12\x1b3"}}, "invalid_request", "control characters"),
        ({"to": "a@example.com", "body": "\ud800"}, "invalid_request", "invalid Unicode"),
        ({"to": "a@example.com", "subject": "x\udfff"}, "invalid_request", "invalid Unicode"),
        ({"to": "a@example.com", "params": {"code": "\ud83d"}}, "invalid_request", "invalid Unicode"),
        ({"to": 5}, "invalid_request", "to must be a string"),
        ({"to": "a@example.com", "subject": 1}, "invalid_request", "subject"),
        ({"to": "a@example.com", "body": ["x"]}, "invalid_request", "body"),
        ({"to": "a@example.com", "params": []}, "invalid_request", "params"),
        ({"to": "a@example.com", "params": {"code": 123}}, "invalid_request", "params"),
        ({"to": "a@example.com", "template": {}}, "invalid_request", "template"),
        ({"to": "a@example.com", "locale": 3}, "invalid_request", "locale"),
        ({"to": "a@example.com", "timeout_seconds": "10"}, "invalid_request", "timeout_seconds"),
        ({"to": "a@example.com", "timeout_seconds": 1.5}, "invalid_request", "timeout_seconds"),
        ({"to": "a@example.com", "timeout_seconds": True}, "invalid_request", "timeout_seconds"),
        ({"to": "a@example.com", "timeout_seconds": 0}, "invalid_request", "timeout_seconds"),
        ({"to": "a@example.com", "channel": "sms"}, "invalid_request", "channel"),
        ({"to": "a@example.com", "channel": 1}, "invalid_request", "channel"),
        ({"to": "a@example.com", "idempotency_key": ""}, "invalid_request", "idempotency key"),
        ({"to": "a@example.com", "idempotency_key": "has space"}, "invalid_request", "idempotency key"),
        ({"to": "a@example.com", "idempotency_key": "tab\there"}, "invalid_request", "idempotency key"),
        ({"to": "a@example.com", "idempotency_key": "x" * 257}, "invalid_request", "idempotency key"),
        ({"to": "a@example.com", "idempotency_key": 7}, "invalid_request", "idempotency_key"),
    ],
)
def test_bad_requests_get_exact_error_and_send_nothing(client, smtp, body, error_code, message_part):
    assert_error(send(client, body), 400, error_code, message_part)
    assert smtp.messages == []


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"null", b"\xff\xfe", b"{" * 5000, b""])
def test_body_that_is_not_a_json_object_is_invalid_request(client, smtp, raw):
    response = client.post("/v1/send", data=raw, content_type="application/json")
    assert_error(response, 400, "invalid_request")
    assert smtp.messages == []


def test_huge_timeout_is_just_the_configured_budget(client, smtp):
    assert send(client, {"to": "a@example.com", "timeout_seconds": 10**400}).status_code == 200


def test_idempotency_key_of_256_characters_is_accepted(client, smtp):
    assert send(client, {"to": "a@example.com", "idempotency_key": "k" * 256}).status_code == 200


def test_header_and_body_idempotency_keys_must_agree(client, smtp):
    response = send(client, {"to": "a@example.com", "idempotency_key": "one"}, {"Idempotency-Key": "two"})
    assert_error(response, 400, "invalid_request", "differ")
    assert smtp.messages == []


def test_bad_idempotency_key_header_is_invalid_request(client, smtp):
    response = send(client, {"to": "a@example.com"}, {"Idempotency-Key": "x" * 300})
    assert_error(response, 400, "invalid_request", "idempotency key")


def test_body_over_max_request_bytes_is_413_json(settings, make_client, smtp):
    client = make_client(with_changes(settings, max_request_bytes=2048))
    response = send(client, {"to": "a@example.com", "body": "x" * 4096})
    assert_error(response, 413, "invalid_request", "too large")
    assert smtp.messages == []


def test_missing_or_wrong_api_key_is_401(settings, make_client, smtp):
    client = make_client(with_changes(settings, api_keys=(API_KEY, "second-key")))
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}):
        assert_error(send(client, {"to": "a@example.com"}, headers), 401, "unauthorized",
                     "invalid or missing API key")
    assert smtp.messages == []
    # Both keys of a rotation are accepted.
    assert send(client, {"to": "a@example.com"}, {"X-API-Key": API_KEY}).status_code == 200
    assert send(client, {"to": "a@example.com"}, {"X-API-Key": "second-key"}).status_code == 200
    assert len(smtp.wait_for(2)) == 2


def test_unauthorized_is_checked_before_the_body(settings, make_client):
    client = make_client(with_changes(settings, api_keys=(API_KEY,)))
    response = client.post("/v1/send", data=b"garbage")
    assert_error(response, 401, "unauthorized")


def test_smtp_not_configured_is_503_provider_down_with_retry_after(make_client):
    client = make_client(settings_from({}))
    response = send(client, {"to": "a@example.com"})
    assert_error(response, 503, "provider_down", "SMTP not configured")
    assert int(response.headers["Retry-After"]) > 0


def test_recipient_rejected_by_server_is_invalid_destination(client, smtp):
    smtp.reject_rcpt = {"nobody@example.com"}
    body = assert_error(send(client, {"to": "nobody@example.com"}), 400, "invalid_destination", "550")
    assert body["retryable"] is False
    assert smtp.messages == []


def test_server_refusing_the_message_is_send_failed_with_reply(client, smtp):
    smtp.inject("message", reply="554 5.7.1 rejected as spam")
    body = assert_error(send(client, {"to": "a@example.com"}), 500, "send_failed", "554 5.7.1 rejected as spam")
    assert body["retryable"] is False


# --- every response is JSON


def test_404_and_405_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/v1/send"), 405, "method_not_allowed")
    assert_error(client.options("/v1/send"), 405, "method_not_allowed")
    assert_error(client.put("/healthz"), 405, "method_not_allowed")


def test_unexpected_error_is_json_internal_error(settings):
    from herald_smtp.web.app import create_app

    app = create_app(settings)

    # A route that fails the way a bug would, to exercise the app's own handler.
    @app.get("/boom")
    def boom():
        raise RuntimeError("bug")

    response = app.test_client().get("/boom")
    assert_error(response, 500, "internal_error")
    assert "bug" not in response.get_data(as_text=True)


# --- headers


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) >= 16
    # An unsafe id is replaced, not echoed into headers and logs.
    assert client.get("/healthz", headers={"X-Request-ID": "a b"}).headers["X-Request-ID"] != "a b"
    assert send(client, {}, {"X-Request-ID": "rid-9"}).headers["X-Request-ID"] == "rid-9"


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "healthy", "service": "herald-smtp"}


def test_arbitrary_input_always_gets_a_json_4xx_and_sends_nothing(client, smtp):
    import random

    rng = random.Random(20261125)  # fixed seed: a reproducible sample of odd inputs
    values = [None, True, 0, -1, 1e308, "", "x" * 300, "\x00", "\r\n", "ü", [], {}, [{}], {"code": 1}]
    fields = ["to", "subject", "body", "params", "template", "locale", "channel", "idempotency_key",
              "timeout_seconds"]
    for _ in range(300):
        body = {f: rng.choice(values) for f in rng.sample(fields, rng.randint(1, len(fields)))}
        body["to"] = rng.choice(["", "bad", "a@b", "a@example.com\r\n", 7, None, "ok@example.com"])
        response = client.post("/v1/send", data=json.dumps(body), content_type=rng.choice(
            ["application/json", "text/plain", "application/x-www-form-urlencoded"]))
        assert response.status_code in (200, 400, 409), (body, response.get_data(as_text=True))
        assert response.is_json and response.get_json()["ok"] is (response.status_code == 200)
        if body["to"] != "ok@example.com":
            assert response.status_code == 400
    for _ in range(100):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        response = client.post("/v1/send", data=raw)
        assert response.status_code == 400 and response.get_json()["error_code"] == "invalid_request"
    assert all(m.rcpt_tos == ["ok@example.com"] for m in smtp.messages)


def test_options_on_any_route_is_a_json_405(client):
    for path in ("/v1/send", "/healthz", "/readyz", "/metrics"):
        assert_error(client.options(path), 405, "method_not_allowed")


# --- what the schema-driven fuzz run and the property tests found


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/send", {"POST"}),
    ("OPTIONS", "/v1/send", {"POST"}),
    ("DELETE", "/v1/send", {"POST"}),
    ("PUT", "/healthz", {"GET", "HEAD"}),
    ("POST", "/readyz", {"GET", "HEAD"}),
    ("OPTIONS", "/metrics", {"GET", "HEAD"}),
])
def test_a_405_is_json_and_names_the_allowed_methods_in_allow(client, method, path, allowed):
    response = client.open(path, method=method)
    assert_error(response, 405, "method_not_allowed")
    assert response.mimetype == "application/json"
    assert {m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()} == allowed  # RFC 9110 15.5.6
    assert response.headers["X-Request-ID"]


SEND_FIELDS = ["to", "channel", "subject", "body", "params", "template", "locale", "idempotency_key", "timeout_seconds"]


@pytest.mark.parametrize("field", SEND_FIELDS)
def test_null_is_refused_for_every_field_and_nothing_is_sent(client, smtp, field):
    # Herald never sends null; taking it as absent would turn `"idempotency_key": null` into a send without
    # idempotency. So null is a wrong type, as the document's `type` says.
    assert_error(send(client, {"to": "a@example.com", field: None}), 400, "invalid_request",
                 f"{field} must not be null")
    assert smtp.messages == []


def test_a_null_body_key_is_refused_even_with_a_header_key(client, smtp):
    response = send(client, {"to": "a@example.com", "idempotency_key": None}, {"Idempotency-Key": "k-null"})
    assert_error(response, 400, "invalid_request", "idempotency_key must not be null")
    assert smtp.messages == []


def test_null_in_an_unknown_field_is_ignored_like_any_unknown_field(client, smtp):
    assert send(client, {"to": "a@example.com", "whatever": None}).status_code == 200
    assert len(smtp.wait_for(1)) == 1


@pytest.mark.parametrize("raw, expected", [
    (b"10.0", 10.0), (b"1.0", 1.0), (b"3e0", 3.0), (b"2.50e1", 25.0), (b"1e400", 86400.0), (b"7", 7.0),
])
def test_an_integral_json_number_is_an_integer_timeout(raw, expected):
    # JSON Schema counts 10.0 as an integer (the document's `type: integer`); so does the service.
    body = b'{"to": "a@example.com", "timeout_seconds": ' + raw + b"}"
    assert parse_send_request(body, None).timeout_seconds == expected


def test_an_integral_float_timeout_sends(client, smtp):
    assert send(client, {"to": "a@example.com", "timeout_seconds": 4.0}).status_code == 200
    assert len(smtp.wait_for(1)) == 1


@pytest.mark.parametrize("raw", [b"1.5", b"0.0", b"-2.0", b"-1e400", b"1e-400", b"true", b'"10"', b"[10]"])
def test_a_timeout_that_is_no_positive_integer_is_still_refused(client, smtp, raw):
    body = b'{"to": "a@example.com", "timeout_seconds": ' + raw + b"}"
    assert_error(client.post("/v1/send", data=body, content_type="application/json"), 400, "invalid_request",
                 "timeout_seconds")
    assert smtp.messages == []


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(client, smtp, raw):
    # Python's json module reads them; RFC 8259 has no such numbers. Refused wherever they stand.
    for body in (b'{"to": "a@example.com", "timeout_seconds": ' + raw + b"}",
                 b'{"to": "a@example.com", "extra": [' + raw + b"]}"):
        assert_error(client.post("/v1/send", data=body, content_type="application/json"), 400, "invalid_request",
                     "not valid JSON")
    assert smtp.messages == []


def test_an_idempotency_key_is_visible_ascii_in_the_body_and_in_the_header(client, smtp):
    key = "ключ-1"
    on_the_wire = key.encode("utf-8").decode("latin-1")  # what a WSGI server hands over for these header bytes
    for body, headers in (({"to": "a@example.com", "idempotency_key": key}, {}),
                          ({"to": "a@example.com"}, {"Idempotency-Key": on_the_wire}),
                          ({"to": "a@example.com", "idempotency_key": key}, {"Idempotency-Key": on_the_wire}),
                          ({"to": "a@example.com", "idempotency_key": "caf\u00e9"}, {}),
                          ({"to": "a@example.com", "idempotency_key": "a\u00a0b"}, {}),
                          ({"to": "a@example.com", "idempotency_key": "del\x7f"}, {})):
        response = send(client, body, headers)
        # The same key in both places is a bad key, not a mismatch.
        assert_error(response, 400, "invalid_request", "visible ASCII")
        assert "differ" not in response.get_json()["error_message"]
    assert smtp.messages == []


def test_every_visible_ascii_character_is_allowed_in_a_key(client, smtp):
    key = "".join(chr(c) for c in range(0x21, 0x7F))
    assert send(client, {"to": "a@example.com", "idempotency_key": key}, {"Idempotency-Key": key}).status_code == 200
    assert len(smtp.wait_for(1)) == 1


def test_params_code_is_held_to_the_body_rule_even_when_a_body_is_given(client, smtp):
    # One context-free rule, so the document can state it as a pattern: params.code never carries control
    # characters other than tab and line breaks, whether or not it becomes the text.
    response = send(client, {"to": "a@example.com", "body": "Your code is below.", "params": {"code": "12\x003"}})
    assert_error(response, 400, "invalid_request", "control characters")
    assert smtp.messages == []
    odd_params = {"code": "12\t3\r\n", "o": "\x00"}
    assert send(client, {"to": "a@example.com", "body": "x", "params": odd_params}).status_code == 200
