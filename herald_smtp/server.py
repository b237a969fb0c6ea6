"""Gunicorn settings derived from Settings, and the embedded gunicorn behind `herald-smtp serve`.

The top-level gunicorn.conf.py reads the same options, so `gunicorn -c
gunicorn.conf.py wsgi:app` and `herald-smtp serve` run the same server.
Nothing here imports the app or prometheus_client at module level: the
metrics directory must be in the environment before either is imported.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from gunicorn.app.base import BaseApplication

from .config import Settings
from .logs import log_startup, logging_dict

# What gunicorn writes per request; the request id ties it to the app's lines.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir() -> str:
    """Point prometheus_client's multiprocess mode at a clean directory.

    PROMETHEUS_MULTIPROC_DIR if set (e.g. an emptyDir in Kubernetes), else a
    fresh temporary directory removed at exit. Runs again on a config reload
    (SIGHUP), so it must not touch the live workers' files; the files of an
    earlier run are removed once, in on_starting.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        directory = tempfile.mkdtemp(prefix="herald-smtp-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        # Remembered in the environment, which survives the reload, so on_exit removes only its own.
        os.environ["HERALD_SMTP_OWN_METRICS_DIR"] = directory
    os.makedirs(directory, exist_ok=True)
    return directory


def gunicorn_options(settings: Settings) -> dict:
    # A worker may spend the SMTP budget (and its connect overrun) plus the idempotency
    # wait on one request; gunicorn must not kill it for that, and a graceful stop lets it finish.
    busy_seconds = settings.send_worst_case_seconds() + settings.idempotency_wait_seconds
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
        # gunicorn 27's control socket lives in $HOME, shared by every instance; not needed here.
        "control_socket_disable": True,
        "on_starting": on_starting_hook(settings),
        "child_exit": child_exit,
        "worker_exit": worker_exit,
        "on_exit": on_exit,
    }


def on_starting_hook(settings: Settings):
    def on_starting(server) -> None:
        # Once per master start (not on reload): an earlier run's files would be summed into ours.
        for stale in glob.glob(os.path.join(os.environ[MULTIPROC_ENV], "*.db")):
            os.remove(stale)
        log_startup(settings)

    return on_starting


def child_exit(server, worker) -> None:
    # A dead worker's gauges must stop counting; its counters stay in the sums.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from .app import close_app

        close_app(app)


def on_exit(server) -> None:
    own = os.environ.get("HERALD_SMTP_OWN_METRICS_DIR")
    if own:
        shutil.rmtree(own, ignore_errors=True)


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
        from .app import create_app

        return create_app(self.settings)
