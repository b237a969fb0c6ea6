"""The bounce reader's own HTTP endpoints, on BOUNCE_READER_PORT: /healthz (the process answers), /readyz (it
holds the lock and its last pass over the mailbox worked: 503 naming the problem otherwise) and /metrics."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..metrics import BounceMetrics
from .reader import Health


def serve(host: str, port: int, health: Health, metrics: BounceMetrics) -> ThreadingHTTPServer:
    """Start the endpoints in a daemon thread; stop them with .shutdown()."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path == "/metrics":
                body, content_type = metrics.exposition()
                self._answer(200, body, content_type)
            elif self.path == "/healthz":
                self._json(200, {"status": "ok"})
            elif self.path == "/readyz":
                with health.lock:
                    shown = {"status": "ready" if health.ready else "not ready", "state": health.state}
                    if health.problem:
                        shown["problem"] = health.problem
                self._json(200 if health.ready else 503, shown)
            else:
                self._json(404, {"error": "not found"})

        def _json(self, status: int, body: dict) -> None:
            self._answer(status, json.dumps(body).encode(), "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - probes every few seconds: no access log
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bounce-reader-http", daemon=True).start()
    return server
