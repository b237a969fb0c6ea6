"""The HTTP floor: a trivial JSON endpoint on exactly herald-smtp's gunicorn configuration.

    python -m bench.floor_app      (settings from the environment, like `herald-smtp serve`)

Same workers, worker class, threads, timeouts, access log and logging as
`herald-smtp serve` (the options come from herald_smtp.tools.serve); only the
app differs: POST /v1/send reads the body and answers a small JSON. What it
costs is what gunicorn, Flask and the load generator cost before herald-smtp
does any work.
"""

from __future__ import annotations

import sys

from flask import Flask, jsonify, request

from herald_smtp.config import load_settings_or_exit
from herald_smtp.logs import configure_logging
from herald_smtp.tools.serve import HeraldServer, prepare_metrics_dir


def create_floor_app() -> Flask:
    app = Flask("herald-floor")

    @app.post("/v1/send")
    def send():
        request.get_data()  # read the body, as herald-smtp does
        return jsonify(ok=True, message_id="floor@bench.invalid", provider="smtp")

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


class FloorServer(HeraldServer):
    """HeraldServer's gunicorn with the trivial app; the hook that closes herald-smtp's SMTP pool is left out."""

    def load_config(self) -> None:
        super().load_config()
        self.cfg.set("worker_exit", _keep_nothing_open)

    def load(self):
        return create_floor_app()


def _keep_nothing_open(server, worker) -> None:
    """worker_exit: the floor app holds no SMTP connections to close."""


def main() -> int:
    settings = load_settings_or_exit()
    configure_logging(settings)
    FloorServer(prepare_metrics_dir(settings)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
