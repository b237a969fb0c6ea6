"""No request bytes in the log: parser and framework exception texts can quote the request.

gunicorn's InvalidChunkSize says `Invalid chunk size: b'<the line>'`, and a bug's
exception (a decode error, a KeyError) can quote whatever it choked on. The
service logs the exception's class and a fixed description instead, and for an
unexpected error the traceback's frames without the exception's message.
"""

from __future__ import annotations

import io
import json
import logging

import pytest

from herald_smtp.config import settings_from
from herald_smtp.addresses import mask_email
from herald_smtp.logs import ContextFilter, GunicornRequestTextFilter, leading_words, logging_dict
from herald_smtp.web.app import create_app
from tests.support.client import API_KEY, exchange, post, smtp_env
from tests.support.herald_process import HeraldProcess

CODE = "482913"
RECIPIENT = "leaky.recipient@example.com"
# A JSON body where the chunk-size line should be: gunicorn's exception quotes the whole line.
LEAKY_LINE = json.dumps({"to": RECIPIENT, "body": f"Your code is {CODE}"}).encode()


@pytest.fixture(scope="module")
def herald(tmp_path_factory, _smtp_session):
    env = smtp_env(_smtp_session) | {"WEB_CONCURRENCY": "1", "API_KEY": API_KEY, "LOG_LEVEL": "DEBUG"}
    with HeraldProcess(tmp_path_factory.mktemp("leaks"), env) as service:
        yield service


def chunked_send(chunks: bytes, *, close: bool, api_key: str = API_KEY) -> bytes:
    headers = [b"POST /v1/send HTTP/1.1", b"Host: herald-smtp", b"Content-Type: application/json",
               b"X-API-Key: " + api_key.encode(), b"Transfer-Encoding: chunked"]
    if close:
        headers.append(b"Connection: close")
    return b"\r\n".join(headers) + b"\r\n\r\n" + chunks


@pytest.mark.parametrize("close", [True, False], ids=["connection-close", "keep-alive"])
def test_a_bad_chunk_size_line_holding_the_body_is_not_logged(herald, close):
    before = len(herald.log_text())
    status, _, body = exchange(herald.port, chunked_send(LEAKY_LINE + b"\r\n0\r\n\r\n", close=close))
    assert status == 400, body
    error = json.loads(body)
    assert error["error_code"] == "invalid_request" and "InvalidChunkSize" in error["error_message"]
    log = herald.log_text()[before:]
    assert CODE not in log, log
    assert RECIPIENT not in log and "leaky.recipient" not in log, log
    assert "InvalidChunkSize" in log, log  # the cause is logged, by its class


@pytest.mark.parametrize("close", [True, False], ids=["connection-close", "keep-alive"])
def test_a_body_the_app_never_reads_is_not_logged_either(herald, close):
    # A wrong key is refused before the body is read; gunicorn then skips the body itself, with its own parser.
    before = len(herald.log_text())
    status, _, body = exchange(herald.port, chunked_send(LEAKY_LINE + b"\r\n0\r\n\r\n", close=close, api_key="wrong"))
    assert status == 401, body
    log = herald.log_text()[before:]
    assert CODE not in log, log
    assert RECIPIENT not in log and "leaky.recipient" not in log, log
    if not close:  # gunicorn read the body to reach the next request, and logs what it refused, by name only
        assert "Invalid request from ip=127.0.0.1: Invalid chunk size (the rest is not logged" in log, log


@pytest.mark.parametrize("error, kept", [
    ("Invalid chunk size: b'{\"to\": \"%s\"}'" % RECIPIENT, "Invalid chunk size"),
    ("Invalid HTTP Header: 'X-Code: %s'" % CODE, "Invalid HTTP Header"),
    ("Invalid chunk terminator is not '\\r\\n': b'%s'" % CODE, "Invalid chunk terminator is not"),
    ("'%s'" % CODE, "malformed request"),
])
@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "2001:db8::7"])
def test_gunicorn_invalid_request_lines_keep_the_ip_and_the_errors_name_only(ip, error, kept):
    record = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 1,
                               f"Invalid request from ip={ip}: {error}", None, None)
    assert GunicornRequestTextFilter().filter(record)
    expected = f"Invalid request from ip={ip}: {kept} (the rest is not logged: it quotes the request)"
    assert record.getMessage() == expected


# --- a refused body: the answer says what is wrong, the log does not quote the request


@pytest.mark.parametrize("payload, answer_part, logged", [
    ({"to": f"{RECIPIENT}, Your code is {CODE}"}, "to is not a valid email address: ",
     "to is not a valid email address: "),
    ({"to": f"leaky@[1.2.3.{CODE}]"}, f"'{CODE}'", "to is not a valid email address: The address in brackets"),
    ({"to": f"leaky@Your code is {CODE}"}, "to is not a valid email address: ", "to is not a valid email address: "),
    ({"to": RECIPIENT, "channel": f"Your code is {CODE}"}, CODE, "unsupported channel"),
], ids=["code-after-the-address", "code-in-an-ip-literal", "code-as-the-domain", "code-as-the-channel"])
def test_a_refused_body_is_logged_without_the_text_it_quotes(herald, payload, answer_part, logged):
    before = len(herald.log_text())
    status, answer, _ = post(herald.url, payload, {"X-API-Key": API_KEY})
    assert status == 400 and answer["error_code"] in ("invalid_destination", "invalid_request"), answer
    assert answer_part in answer["error_message"]  # the caller is told, quoting what it sent
    log = herald.log_text()[before:]
    assert CODE not in log, log
    assert RECIPIENT not in log and "leaky.recipient" not in log, log
    assert logged in log, log


@pytest.mark.parametrize("to, masked", [
    ("alice@example.com", "a***@example.com"),
    ("li@例子.中国", "l***@例子.中国"),  # an international domain is still shown
    (f"leaky@Your code is {CODE}", "l***@***"),  # text after the @ that is no domain is not
    (f"leaky@[1.2.3.{CODE}]", "l***@***"),
    (f"{RECIPIENT}, code {CODE}", "l***@***"),
])
def test_a_masked_recipient_shows_a_domain_but_no_free_text(to, masked):
    assert mask_email(to) == masked


def test_leading_words_keep_what_went_wrong_without_what_it_quotes():
    assert leading_words(f"Invalid chunk size: b'{CODE}'") == "Invalid chunk size"
    assert leading_words(f"The part after the @-sign is invalid (Codepoint U+2014 of 'x{CODE}').") == \
        "The part after the @-sign is invalid"
    assert leading_words("An email address cannot have two periods in a row.") == \
        "An email address cannot have two periods in a row"


# --- an unexpected error (a bug): the frames and the class, not the message


class LeakyBug(ValueError):
    pass


def decode_the_body():
    raise KeyError(f"{RECIPIENT}: Your code is {CODE}")


def raise_the_bug():
    try:
        decode_the_body()
    except KeyError as exc:  # a chain: both messages quote the request
        raise LeakyBug(f"cannot decode {RECIPIENT}: Your code is {CODE}") from exc


def captured_log(settings) -> tuple[logging.Handler, io.StringIO]:
    """A handler with the service's own formatter and filter (as configured for `settings`), on a string."""
    config = logging_dict(settings)
    options = dict(config["formatters"]["main"])
    factory = options.pop("()")
    if "format" in options:  # logging.Formatter's own argument name
        options["fmt"] = options.pop("format")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(factory(**options))
    handler.addFilter(ContextFilter())
    return handler, stream


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_unexpected_error_logs_its_class_and_frames_but_not_its_message(smtp, log_format):
    settings = settings_from(smtp_env(smtp) | {"LOG_FORMAT": log_format})
    app = create_app(settings)
    app.add_url_rule("/test-only/bug", "bug", lambda: raise_the_bug())  # a test-only route, before the first request
    handler, stream = captured_log(settings)
    logger = logging.getLogger("herald_smtp")
    logger.addHandler(handler)
    try:
        response = app.test_client().get("/test-only/bug")
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500 and response.get_json()["error_code"] == "internal_error"
    log = stream.getvalue()
    assert CODE not in log, log
    assert RECIPIENT not in log and "leaky.recipient" not in log, log
    assert "internal error" in log
    assert "LeakyBug" in log and "KeyError" in log  # the classes, of the chain too
    # The traceback's frames: the functions that raised, in this file.
    assert "raise_the_bug" in log and "decode_the_body" in log and "test_log_leaks.py" in log
