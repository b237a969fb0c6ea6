"""The Flask app factory: wiring, request ids and the requests metric.

create_app() builds the store, mailer and send service once per process
(see services.py); responses.py renders every answer and error.
"""

from __future__ import annotations

import re
import time
import uuid

from typing import cast

from flask import Flask, g, request
from flask.json.provider import DefaultJSONProvider

from .. import tracing
from ..config import Settings, load_settings
from ..idempotency.base import Store
from ..idempotency.store import open_store
from ..metrics import Metrics
from ..sending.service import SendService
from ..smtp.mailer import Mailer
from . import auth, health, messages, send, suppressions
from .responses import HeraldResponse, register_error_handlers
from .services import EXTENSION, Services, services

# An X-Request-ID we echo must be safe to put in a header and a log line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def create_app(settings: Settings | None = None, store: Store | None = None, clock=time.monotonic) -> Flask:
    settings = settings or load_settings()
    store = store or open_store(settings.redis_target, settings.redis_key_prefix)
    app = Flask(__name__)
    app.response_class = HeraldResponse
    # Werkzeug enforces this while reading the body, chunked uploads included.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    json = cast(DefaultJSONProvider, app.json)  # Flask's own provider: these are its settings
    json.ensure_ascii = False
    json.sort_keys = False
    metrics = Metrics(settings.metrics_dir)
    metrics.smtp_timeout.set(settings.smtp_timeout_seconds)
    mailer = Mailer(settings, metrics, clock=clock)
    app.extensions[EXTENSION] = Services(settings, store, SendService(settings, store, mailer, metrics), metrics)

    app.before_request(_assign_request_id)
    app.after_request(_add_request_id)
    app.after_request(_count_request)
    register_error_handlers(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(send.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(suppressions.bp)
    app.register_blueprint(health.bp)
    tracing.instrument_app(app)  # nothing while tracing is off
    return app


def close_app(app: Flask) -> None:
    """At worker exit: QUIT the pooled SMTP connections."""
    app.extensions[EXTENSION].send.close()


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def _add_request_id(response):
    if "request_id" in g:
        response.headers["X-Request-ID"] = g.request_id
    return response


def _count_request(response):
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    error_code = getattr(response, "error_code", "")
    services().metrics.requests.labels(endpoint, str(response.status_code), error_code).inc()
    return response
