"""The Flask app factory: wiring, request ids, and JSON for every error.

create_app() builds the store and mailer once per process (see context.py).
"""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from . import auth, health, send
from .config import Settings, load_settings
from .context import EXTENSION, Services
from .idempotency import Store, open_store
from .context import services
from .mailer import Mailer
from .metrics import Metrics
from .outcomes import Result
from .responses import render_result
from .service import SendService

log = logging.getLogger("herald_smtp.app")

# An X-Request-ID we echo must be safe to put in a header and a log line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

# HTTP errors raised by Flask/Werkzeug itself -> our outcome names.
_HTTP_OUTCOMES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def create_app(settings: Settings | None = None, store: Store | None = None) -> Flask:
    settings = settings or load_settings()
    store = store or open_store(settings)
    app = Flask(__name__)
    # Werkzeug enforces this while reading the body, chunked uploads included.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    metrics = Metrics()
    mailer = Mailer(settings, metrics)
    app.extensions[EXTENSION] = Services(settings, store, SendService(settings, store, mailer, metrics), metrics)

    app.before_request(_assign_request_id)
    app.after_request(_add_request_id)
    app.after_request(_count_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.register_blueprint(auth.bp)
    app.register_blueprint(send.bp)
    app.register_blueprint(health.bp)
    return app


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def _add_request_id(response):
    if "request_id" in g:
        response.headers["X-Request-ID"] = g.request_id
    return response


def close_app(app: Flask) -> None:
    """At worker exit: QUIT the pooled SMTP connections."""
    app.extensions[EXTENSION].send.mailer.close()


def _count_request(response):
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    services().metrics.requests.labels(endpoint, str(response.status_code), g.get("error_code", "")).inc()
    return response


def _http_error(exc: HTTPException):
    outcome = _HTTP_OUTCOMES.get(exc.code)
    if outcome is None:
        outcome = "internal_error" if (exc.code or 500) >= 500 else "invalid_request"
    result = Result(outcome, "request body too large" if exc.code == 413 else (exc.description or exc.name))
    log.warning("request failed", extra={"status": exc.code, "path": request.path, "method": request.method,
                                          "error_code": result.info.error_code, "errmsg": result.message})
    return render_result(result)


def _unexpected_error(exc: Exception):
    log.exception("internal error", extra={"path": request.path, "method": request.method})
    return render_result(Result("internal_error", "internal error; see the service log for this request id"))
