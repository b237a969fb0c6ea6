"""Log lines that join other systems' logs: RFC 3339 `time`, and the request id on gunicorn's access line."""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from herald_smtp.logs import (ContextFilter, GunicornRequestTextFilter, JsonLineFormatter, TextFormatter, logging_dict,
                              rfc3339)
from herald_smtp.config import settings_from
from tests.support.client import API_KEY, post, smtp_env
from tests.support.herald_process import HeraldProcess

# RFC 3339 with milliseconds and an explicit zone (Z or +HH:MM).
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)")


def parse_time(value: str) -> datetime:
    assert RFC3339_MS.fullmatch(value), f"time {value!r} is not RFC 3339 with milliseconds and a zone"
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


@pytest.fixture(scope="module")
def service_log(tmp_path_factory, _smtp_session) -> tuple[list[dict], dict[str, str]]:
    """The real service under gunicorn: one send with an X-Request-ID, one without, a probe."""
    env = smtp_env(_smtp_session) | {"API_KEY": API_KEY, "WEB_CONCURRENCY": "1"}
    answered = {}
    with HeraldProcess(tmp_path_factory.mktemp("logs"), env) as service:
        status, _, headers = post(service.url, {"to": "alice@example.com", "params": {"code": "123456"}},
                                  {"X-API-Key": API_KEY, "X-Request-ID": "req-join-1"})
        assert status == 200
        answered["given"] = headers["X-Request-ID"]
        status, _, headers = post(service.url, {"to": "x"}, {"X-API-Key": API_KEY})
        assert status == 400
        answered["generated"] = headers["X-Request-ID"]
        with urllib.request.urlopen(service.url + "/healthz", timeout=5) as response:
            answered["healthz"] = response.headers["X-Request-ID"]
        for path in ("li.wei@example.com", "li.wei%40example.com", "zh@b%C3%BCcher.example"):  # not suppressed: 404
            lookup = urllib.request.Request(service.url + "/v1/suppressions/" + path, headers={"X-API-Key": API_KEY})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(lookup, timeout=5)
            assert refused.value.code == 404
    lines = [json.loads(line) for line in service.log_text().splitlines() if line.strip()]
    return lines, answered


def access_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "gunicorn.access"]


def test_gunicorn_access_lines_carry_the_request_id_answered(service_log):
    lines, answered = service_log
    assert answered["given"] == "req-join-1"
    by_id = {line["request_id"]: line for line in access_lines(lines)}
    for name, request_id in answered.items():
        assert request_id in by_id, f"no access line with request_id {request_id!r} ({name}): {access_lines(lines)}"
    assert '"POST /v1/send HTTP/1.1" 200' in by_id["req-join-1"]["message"]
    assert '"POST /v1/send HTTP/1.1" 400' in by_id[answered["generated"]]["message"]
    # The id is a field now, not part of the text.
    for line in access_lines(lines):
        assert "request_id=" not in line["message"] and line["request_id"] not in line["message"]


def test_the_access_line_masks_the_address_in_a_suppression_path(service_log):
    lines, _ = service_log
    paths = [line["message"] for line in access_lines(lines) if "/v1/suppressions/" in line["message"]]
    assert len(paths) == 3, paths
    text = "\n".join(paths)
    assert "li.wei" not in text and "zh@" not in text and "%40" not in text, text
    assert text.count("/v1/suppressions/l***@example.com HTTP/1.1\" 404") == 2, text
    assert "/v1/suppressions/z***@" in text, text


def test_the_app_and_gunicorn_lines_of_one_request_share_its_id(service_log):
    lines, _ = service_log
    of_request = [line for line in lines if line.get("request_id") == "req-join-1"]
    assert {line["logger"] for line in of_request} >= {"herald_smtp.send", "gunicorn.access"}, of_request


def test_every_line_has_an_rfc3339_time_with_zone_and_milliseconds(service_log):
    lines, _ = service_log
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "gunicorn.access", "herald_smtp"} <= loggers, loggers
    now = datetime.now(timezone.utc)
    for line in lines:
        stamp = parse_time(line["time"])
        assert now - timedelta(minutes=10) < stamp <= now + timedelta(seconds=1), line


def make_record(name: str = "herald_smtp.test", msg: str = "hello", args=None) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, (args,) if args else None, None)
    record.created = datetime(2026, 12, 1, 8, 52, 38, 562_000, tzinfo=timezone.utc).timestamp()
    ContextFilter().filter(record)
    return record


def test_rfc3339_is_utc_with_milliseconds():
    assert rfc3339(datetime(2026, 12, 1, 8, 52, 38, 562_900, tzinfo=timezone.utc).timestamp()) \
        == "2026-12-01T08:52:38.562Z"


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False))
def test_rfc3339_writes_what_datetime_writes(seconds):
    # The date and time of day are made once a second; the line must still be datetime's, to the millisecond.
    expected = datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert rfc3339(seconds) == expected
    assert rfc3339(seconds, "seconds") == expected[:19] + "Z"


def test_the_configured_formatters_write_rfc3339():
    json_fmt = logging_dict(settings_from({"LOG_FORMAT": "json"}))["formatters"]["main"]
    text_fmt = logging_dict(settings_from({"LOG_FORMAT": "text"}))["formatters"]["main"]
    assert json_fmt["()"] is JsonLineFormatter and text_fmt["()"] is TextFormatter
    record = make_record()
    formatter = JsonLineFormatter(fmt=json_fmt["fmt"], rename_fields=json_fmt["rename_fields"], timestamp=False)
    assert json.loads(formatter.format(record))["time"] == "2026-12-01T08:52:38.562Z"
    text = TextFormatter(text_fmt["format"]).format(make_record())
    assert text.startswith("2026-12-01T08:52:38.562Z INFO herald_smtp.test [None] hello"), text


def test_an_access_record_without_the_header_has_no_request_id():
    # gunicorn's atoms answer "-" for a header the response lacks (an answer gunicorn itself gave).
    record = make_record("gunicorn.access", "%(h)s %({x-request-id}o)s", {"h": "127.0.0.1", "{x-request-id}o": "-"})
    assert record.request_id is None
    record = make_record("gunicorn.access", "%(h)s", {"h": "127.0.0.1"})
    assert record.request_id is None
    record = make_record("gunicorn.access", "%(h)s", {"h": "127.0.0.1", "{x-request-id}o": "abc"})
    assert record.request_id == "abc"


class _Reading:
    """A value JSON has no type for: both formatters fall back to str()."""

    def __str__(self) -> str:
        return "a reading"


def _records() -> list[logging.LogRecord]:
    """Records like the service's: plain, with extras (None, numbers, nested, non-ASCII, a datetime, an object),
    gunicorn's access record with its atoms, an exception, a stack, a dict as the message, private attributes."""
    plain = make_record()
    send_ok = make_record("herald_smtp.send", "send ok")
    send_ok.__dict__.update(message_id="<a@b>", to="j***@example.com", relay="primary", relay_queue_id=None,
                            duration_ms=2.5, limit=3, nested={"a": [1, 2.5, None, True]}, name_é="zé 例",
                            at=datetime(2026, 12, 1, tzinfo=timezone.utc), reading=_Reading(), _private="hidden")
    access = make_record("gunicorn.access", '%(h)s "%(r)s" %(s)s', {"h": "127.0.0.1", "r": "POST /v1/send HTTP/1.1",
                                                                 "s": "200", "{x-request-id}o": "abc"})
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        failed = logging.LogRecord("herald_smtp", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info())
    failed.stack_info = "Stack (most recent call last):\n  a frame"
    ContextFilter().filter(failed)
    as_dict = make_record("herald_smtp", "ignored")
    as_dict.msg = {"event": "a dict", "n": 1}
    with_text = make_record("herald_smtp", "cached")
    with_text.exc_text = "Traceback text formatted earlier"
    return [plain, send_ok, access, failed, as_dict, with_text]


def test_the_json_lines_are_python_json_loggers_key_for_key():
    # JsonLineFormatter replaced python-json-logger's JsonFormatter (less work per line): same keys, same values,
    # in the same order, for the configured fmt and renames.
    from pythonjsonlogger.json import JsonFormatter

    options = dict(logging_dict(settings_from({"LOG_FORMAT": "json"}))["formatters"]["main"])
    ours = options.pop("()")(**options)

    class Reference(JsonFormatter):
        def formatTime(self, record, datefmt=None):
            return rfc3339(record.created)

    reference = Reference(**options)
    for record in _records():
        theirs = reference.format(logging.makeLogRecord(dict(record.__dict__)))
        assert ours.format(logging.makeLogRecord(dict(record.__dict__))) == theirs
        assert "hidden" not in theirs and json.loads(theirs)["logger"] == record.name


def _access_atoms(logger_class, access_log_format: str, headers) -> dict:
    """What gunicorn's access() wraps, for a request like the service's (the objects gunicorn passes: its
    response's status, bytes sent and headers, the WSGI environ, the request's duration)."""
    from types import SimpleNamespace

    from gunicorn.config import Config

    cfg = Config()
    cfg.set("access_log_format", access_log_format)
    cfg.set("accesslog", "-")
    response = SimpleNamespace(status="404 NOT FOUND", sent=123, headers=headers)
    environ = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "GET", "RAW_URI": "/v1/suppressions/a%40b.example?x=1",
               "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/v1/suppressions/a@b.example", "QUERY_STRING": "x=1",
               "HTTP_USER_AGENT": 'agent "quoted"'}
    request = SimpleNamespace(headers=[("HOST", "127.0.0.1"), ("USER-AGENT", 'agent "quoted"')])
    return logger_class(cfg).atoms(response, request, environ, timedelta(seconds=1, microseconds=234_567))


@pytest.mark.parametrize("headers", [
    [("Content-Type", "application/json"), ("X-Request-ID", "req-1")],
    [("Content-Type", "text/html")],  # gunicorn's own answers carry no id
    [("x-request-id", "first"), ("X-REQUEST-ID", "last")],
])
def test_the_access_logger_gives_gunicorns_atoms_for_the_line_and_the_filters(headers):
    from gunicorn.glogging import Logger, SafeAtoms

    from herald_smtp.logs import AccessLogger
    from herald_smtp.tools.serve import ACCESS_LOG_FORMAT, gunicorn_options

    assert gunicorn_options(settings_from({}))["logger_class"] is AccessLogger
    ours = SafeAtoms(_access_atoms(AccessLogger, ACCESS_LOG_FORMAT, headers))
    gunicorns = SafeAtoms(_access_atoms(Logger, ACCESS_LOG_FORMAT, headers))
    assert ACCESS_LOG_FORMAT % ours == ACCESS_LOG_FORMAT % gunicorns
    for atom in ("h", "r", "s", "b", "M", "U", "{x-request-id}o", "{X-Request-ID}o"):
        assert ours[atom] == gunicorns[atom], atom
    # The filters read the same atoms from both: the masked path and the request id.
    for atoms in (ours, gunicorns):
        GunicornRequestTextFilter().filter(make_record("gunicorn.access", ACCESS_LOG_FORMAT, atoms))
    assert ours["r"] == gunicorns["r"] == "GET /v1/suppressions/a***@b.example?x=1 HTTP/1.1"
    assert make_record("gunicorn.access", ACCESS_LOG_FORMAT, ours).request_id == \
        make_record("gunicorn.access", ACCESS_LOG_FORMAT, gunicorns).request_id


def test_another_access_format_gets_all_of_gunicorns_atoms():
    from gunicorn.glogging import Logger

    from herald_smtp.logs import AccessLogger

    headers = [("X-Request-ID", "req-1")]
    fmt = '%(h)s %(t)s "%(a)s" %({host}i)s'
    ours, gunicorns = _access_atoms(AccessLogger, fmt, headers), _access_atoms(Logger, fmt, headers)
    assert ours.keys() == gunicorns.keys() and ours["a"] == 'agent "quoted"' and ours["{host}i"] == "127.0.0.1"
