"""A TCP relay on 127.0.0.1 in front of the SMTP test server, able to trickle the server's bytes.

aiosmtpd can stall a phase (SmtpTestServer.inject(delay=...)) but cannot send
a reply one byte at a time; this relay can. herald-smtp talks to the relay's
port; everything passes through unchanged (STARTTLS included: the relay does
not look at the bytes) until `trickle` is set, from which moment every byte
from the server to the client waits `trickle` seconds, on live connections
too. stop() closes the listener and hangs up on every relayed connection, so
with the SMTP test server stopped as well the port refuses connections, as a
dead server's does.
"""

from __future__ import annotations

import socket
import threading

from tests.support.net import LOCALHOST, free_port

_POLL_SECONDS = 0.2


class SmtpProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port = LOCALHOST, free_port()
        self.trickle = 0.0  # seconds per byte from the server to the client; 0 passes through
        self.connections = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._accepting: threading.Thread | None = None

    def start(self) -> "SmtpProxy":
        if self._accepting is not None:
            raise RuntimeError(f"SMTP relay already running on port {self.port}")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the same port again after stop()
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(_POLL_SECONDS)
        self._stop = threading.Event()
        self._accepting = threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True,
                                           name="smtp-relay-accept")
        self._accepting.start()
        return self

    def stop(self) -> None:
        accepting, self._accepting = self._accepting, None
        if accepting is None:
            return
        self._stop.set()
        accepting.join(timeout=5)
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
            threads, self._threads = self._threads, []
        for sock in sockets:
            _close(sock)
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> "SmtpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except socket.timeout:
                    continue
                except OSError:
                    break
                try:
                    server = socket.create_connection(self.upstream, timeout=2)
                except OSError:
                    _close(client)  # the server is down: hang up at once
                    continue
                self.connections += 1
                for sock in (client, server):
                    sock.settimeout(_POLL_SECONDS)
                pumps = [threading.Thread(target=self._pump, args=(client, server, stop, False), daemon=True),
                         threading.Thread(target=self._pump, args=(server, client, stop, True), daemon=True)]
                with self._lock:
                    self._sockets |= {client, server}
                    self._threads = [t for t in self._threads if t.is_alive()] + pumps
                for pump in pumps:
                    pump.start()
        finally:
            listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket, stop: threading.Event, from_server: bool) -> None:
        try:
            while not stop.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                if from_server:
                    self._dribble(dst, data, stop)
                else:
                    dst.sendall(data)
        except OSError:
            pass  # either side hung up
        finally:
            with self._lock:
                self._sockets -= {src, dst}
            _close(src)
            _close(dst)

    def _dribble(self, dst: socket.socket, data: bytes, stop: threading.Event) -> None:
        for i in range(len(data)):
            delay = self.trickle
            if not delay:
                dst.sendall(data[i:])
                return
            if stop.wait(delay):
                return
            dst.sendall(data[i:i + 1])


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
