"""Gunicorn settings derived from Settings, and the embedded gunicorn behind `herald-smtp serve`.

The top-level gunicorn.conf.py reads the same options, so `gunicorn -c
gunicorn.conf.py wsgi:app` and `herald-smtp serve` run the same server.
Nothing here imports the app or prometheus_client at module level: the
metrics directory must be in the environment before either is imported.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import replace

from gunicorn.app.base import BaseApplication

from ..config import Settings
from ..logs import AccessLogger, log_startup, logging_dict
from ..timing import gunicorn_timeouts

# What gunicorn writes per request. The request id that ties it to the app's lines is not in the
# text: logs.py puts it in the line's `request_id` field, as on every other line.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# In a metrics directory we created ourselves: on_exit removes only such a directory.
_OWNED_MARKER = ".created-by-herald-smtp"
# gunicorn's parser refuses, with its own fixed text/html page, a request line over LIMIT_REQUEST_LINE bytes (414),
# a header line over LIMIT_REQUEST_FIELD_SIZE bytes or more than LIMIT_REQUEST_FIELDS fields (431), and malformed
# HTTP (400): gunicorn has no hook or setting for that page, so those answers carry no X-Request-ID. These are
# gunicorn's defaults, pinned so that the figures in docs/openapi.yaml (`x-malformed-http`) cannot drift with a
# gunicorn upgrade; Herald's requests stay far below them.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190


def prepare_metrics_dir(settings: Settings) -> Settings:
    """Point prometheus_client's multiprocess mode at a directory; the settings that name it.

    PROMETHEUS_MULTIPROC_DIR if set (e.g. an emptyDir in Kubernetes), else a
    fresh temporary directory removed at exit. prometheus_client reads only
    the environment variable, so it is exported for the workers gunicorn forks,
    before anything imports prometheus_client. Runs again on a config reload
    (SIGHUP), so it must not touch the live workers' files; the files of an
    earlier run are removed once, in on_starting.
    """
    directory = settings.metrics_dir
    if not directory:
        directory = tempfile.mkdtemp(prefix="herald-smtp-metrics-")
        open(os.path.join(directory, _OWNED_MARKER), "w").close()
    os.makedirs(directory, exist_ok=True)
    os.environ[MULTIPROC_ENV] = directory
    return replace(settings, metrics_dir=directory)


def gunicorn_options(settings: Settings) -> dict:
    timeout, graceful_timeout = gunicorn_timeouts(settings)
    return {
        "bind": [settings.bind],
        "workers": settings.workers(),
        "worker_class": "gthread",
        "threads": settings.web_threads,
        "timeout": timeout,
        "graceful_timeout": graceful_timeout,
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "logger_class": AccessLogger,  # gunicorn's logger, building only the atoms that format reads
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "logconfig_dict": logging_dict(settings),
        # gunicorn 27's control socket lives in $HOME, shared by every instance; not needed here.
        "control_socket_disable": True,
        "on_starting": on_starting_hook(settings),
        "post_fork": post_fork_hook(settings),
        "post_worker_init": post_worker_init,
        "child_exit": child_exit,
        "worker_exit": worker_exit,
        "on_exit": on_exit_hook(settings),
    }


def on_starting_hook(settings: Settings):
    def on_starting(server) -> None:
        # Once per master start (not on reload): an earlier run's files would be summed into ours.
        for stale in glob.glob(os.path.join(settings.metrics_dir, "*.db")):
            os.remove(stale)
        log_startup(settings)

    return on_starting


def post_fork_hook(settings: Settings):
    def post_fork(server, worker) -> None:
        # In the worker, before it loads the app: the span exporter's thread must live in this process.
        from .. import tracing

        tracing.setup(settings)

    return post_fork


def post_worker_init(worker) -> None:
    """Chain a SIGTERM handler in front of gunicorn's own, so /readyz knows the worker is draining.

    On SIGTERM gunicorn stops accepting connections and finishes the requests
    in flight, but for a moment still answers a request arriving on a kept-alive
    connection; that /readyz must say 503 (docs/DEPLOYMENT.md, Readiness).
    gunicorn has no hook for SIGTERM in a worker, hence the handler. The flag is
    set before gunicorn's handler runs: a request gunicorn still serves after its
    handler (it then answers "Connection: close") always sees it.
    """
    app = getattr(worker, "wsgi", None)
    previous = signal.getsignal(signal.SIGTERM)
    if app is None or not callable(previous):
        return
    from ..web.health import start_draining

    def on_sigterm(signum, frame) -> None:
        start_draining(app)
        try:
            logging.getLogger("herald_smtp.health").warning(
                "draining: SIGTERM received; /readyz answers 503 until this worker exits")
        except Exception:  # e.g. a reentrant write to stdout: the flag is what matters
            pass
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn has it: let system calls in flight finish


def child_exit(server, worker) -> None:
    # A dead worker's gauges must stop counting; its counters stay in the sums.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker) -> None:
    from .. import tracing

    app = getattr(worker, "wsgi", None)
    if app is not None:
        from ..web.app import close_app

        close_app(app)
    tracing.shutdown()  # flush the spans still batched: a graceful stop loses none


def on_exit_hook(settings: Settings):
    def on_exit(server) -> None:
        if os.path.exists(os.path.join(settings.metrics_dir, _OWNED_MARKER)):
            shutil.rmtree(settings.metrics_dir, ignore_errors=True)

    return on_exit


class HeraldServer(BaseApplication):
    """gunicorn with our options and our app factory, no command-line parsing."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name, value in gunicorn_options(self.settings).items():
            if name in self.cfg.settings:  # options an older gunicorn lacks are skipped
                self.cfg.set(name, value)

    def load(self):
        from ..web.app import create_app

        return create_app(self.settings)
