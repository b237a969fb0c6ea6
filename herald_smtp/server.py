"""Gunicorn settings derived from Settings, and the embedded gunicorn behind `herald-smtp serve`.

The top-level gunicorn.conf.py reads the same options, so `gunicorn -c
gunicorn.conf.py wsgi:app` and `herald-smtp serve` run the same server.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from .config import Settings
from .logs import log_startup, logging_dict

# What gunicorn writes per request; the request id ties it to the app's lines.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'


def gunicorn_options(settings: Settings) -> dict:
    # A worker may spend the SMTP budget plus the idempotency wait on one request;
    # gunicorn must not kill it for that.
    busy_seconds = settings.smtp_timeout_seconds + settings.idempotency_wait_seconds
    return {
        "bind": [settings.bind],
        "workers": settings.workers(),
        "worker_class": "gthread",
        "threads": settings.web_threads,
        "timeout": int(max(30, busy_seconds + 15)),
        "graceful_timeout": int(max(30, busy_seconds + 5)),
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "logconfig_dict": logging_dict(settings),
        "limit_request_line": 8190,
    }


def on_starting_hook(settings: Settings):
    def on_starting(server) -> None:
        log_startup(settings)

    return on_starting


class HeraldServer(BaseApplication):
    """gunicorn with our options and our app factory, no command-line parsing."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options = gunicorn_options(self.settings) | {"on_starting": on_starting_hook(self.settings)}
        for name, value in options.items():
            self.cfg.set(name, value)

    def load(self):
        from .app import create_app

        return create_app(self.settings)
