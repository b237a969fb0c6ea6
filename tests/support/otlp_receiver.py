"""A minimal OTLP/HTTP trace receiver on 127.0.0.1, for the tracing tests and the bench.

Each export (ExportTraceServiceRequest) is counted and, with decode=True, parsed
and kept: spans() lists what arrived. The bench's "tracing on" measurement
counts only, so the receiver costs the machine as little as a collector would.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .net import LOCALHOST


class OtlpReceiver:
    def __init__(self, decode: bool = True):
        self.decode = decode
        self.exports = 0
        self.requests: list = []  # ExportTraceServiceRequest, with decode=True
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._received(self.path, body)
                answer = receiver._answer()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # quiet: the tests and the bench print their own lines
                pass

        self.server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self.server.server_address[1]}"

    def _received(self, path: str, body: bytes) -> None:
        export = None
        if self.decode:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            export = ExportTraceServiceRequest()
            export.ParseFromString(body)
        with self._lock:
            self.exports += 1
            self.paths.append(path)
            if export is not None:
                self.requests.append(export)

    def _answer(self) -> bytes:
        if not self.decode:
            return b""  # an empty ExportTraceServiceResponse
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        return ExportTraceServiceResponse().SerializeToString()

    def __enter__(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[tuple[dict, object]]:
        """(resource attributes, span) for every span received (decode=True)."""
        out = []
        for export in self.requests:
            for resource_spans in export.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out
