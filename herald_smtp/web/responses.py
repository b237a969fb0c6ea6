"""Every response the service gives: Result -> Answer -> JSON, and the error handlers.

Views and hooks hand an Answer (or a Result) to render(); Flask's own HTTP
errors (with their headers, e.g. `Allow` on a 405), InvalidRequest, a body
gunicorn cannot parse (malformed chunked encoding) and unexpected exceptions
come here through the handlers registered by register_error_handlers(). Each
response carries its error_code for the requests metric.

The log lines name an exception by its class, never by its text: a parser's or
the framework's message can quote the request (gunicorn's InvalidChunkSize
quotes the bad chunk-size line, which may be the whole JSON body with the
recipient and the code).
"""

from __future__ import annotations

import logging
from typing import cast

from flask import Flask, Response, jsonify, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException

from ..logs import traceback_without_messages
from ..outcomes import Answer, Outcome, Result, answer_for
from ..sending.report import report
from ..sending.request import InvalidRequest

log = logging.getLogger("herald_smtp.app")

# HTTP errors raised by Flask/Werkzeug itself -> our outcomes.
_HTTP_OUTCOMES = {404: Outcome.NOT_FOUND, 405: Outcome.METHOD_NOT_ALLOWED, 413: Outcome.PAYLOAD_TOO_LARGE}


class HeraldResponse(Response):
    """Flask's response, plus the error_code it answers ("" on success and for non-send endpoints)."""

    error_code = ""


def render(answer: Answer) -> HeraldResponse:
    response = cast(HeraldResponse, jsonify(answer.body))  # the app's response_class (create_app)
    response.status_code = answer.status
    response.error_code = answer.error_code
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if answer.retry_after is not None:
        response.headers["Retry-After"] = str(answer.retry_after)
    return response


def render_result(result: Result) -> HeraldResponse:
    return render(answer_for(result))


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(InvalidRequest, _invalid_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ParseException, _malformed_body)
    app.register_error_handler(Exception, _unexpected_error)


def _invalid_request(exc: InvalidRequest):
    report(Result(exc.outcome, exc.log_message), exc.to)
    return render_result(Result(exc.outcome, exc.message))


def _http_error(exc: HTTPException):
    outcome = _HTTP_OUTCOMES.get(exc.code or 500)
    if outcome is None:
        outcome = Outcome.INTERNAL_ERROR if (exc.code or 500) >= 500 else Outcome.INVALID_REQUEST
    result = Result(outcome, "request body too large" if exc.code == 413 else (exc.description or exc.name))
    # The log gets the status's fixed name: a description can be set by whoever raised the error.
    log.warning("request failed", extra={"status": exc.code, "path": request.path, "method": request.method,
                                          "error_code": outcome.error_code,
                                          "errmsg": "request body too large" if exc.code == 413 else exc.name})
    response = render_result(result)
    # Werkzeug's own headers for the error, Content-Type aside (ours is JSON): above all `Allow` on a 405,
    # which RFC 9110 requires. OPTIONS is not in it: the app answers OPTIONS with this 405 on purpose.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _malformed_body(exc: ParseException):
    # gunicorn parses a chunked body only while the app reads it: a bad chunk size, terminator or extension is
    # raised here, in request.get_data(). The client's fault, not a bug: 400, and no traceback in the log.
    # Its class names the fault; its text quotes the bytes it refused, which may be the body itself.
    result = Result(Outcome.INVALID_REQUEST, f"malformed HTTP request body: {type(exc).__name__}")
    log.warning("request failed", extra={"status": 400, "path": request.path, "method": request.method,
                                          "error_code": result.outcome.error_code, "errmsg": result.message})
    return render_result(result)


def _unexpected_error(exc: Exception):
    # Not log.exception: the traceback's last line is the exception's message, and a bug's message may quote
    # the request (a decode error quoting the bytes, a KeyError naming a value). The frames and the class are
    # what a fix needs; the message is left out.
    log.error("internal error", extra={"path": request.path, "method": request.method,
                                       "exception": f"{type(exc).__module__}.{type(exc).__qualname__}",
                                       "traceback": traceback_without_messages(exc)})
    return render_result(Result(Outcome.INTERNAL_ERROR, "internal error; see the service log for this request id"))
