"""A do-nothing OTLP/HTTP receiver for the bench's "tracing on" measurement.

herald-smtp with OTEL_EXPORTER_OTLP_ENDPOINT pointing here builds, batches
and exports every span as it would to a collector; the sink reads each
export, counts it and answers 200. In a thread of the bench process (wrk
does the load), on 127.0.0.1, stopped with the measurement.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.net import LOCALHOST


class OtlpSink:
    def __init__(self):
        self.exports = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOCALHOST, 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self._server.server_port}"

    def _handler(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    sink.exports += 1
                    sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet: the bench prints its own lines
                pass

        return Handler

    def __enter__(self) -> "OtlpSink":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
