"""A raw TCP server on 127.0.0.1 that misbehaves at the byte level, for deadline and greeting tests.

aiosmtpd cannot stall a TLS handshake, trickle a reply one byte at a time
or greet like an SSH server; this can. Each connection: wait
`handshake_delay`, do the TLS handshake (implicit TLS, when a context is
given), wait `banner_delay`, send `banner` (one byte every `trickle`
seconds when set), then read and discard until the client hangs up.
"""

from __future__ import annotations

import socket
import ssl
import threading

from .net import LOCALHOST


class SlowServer:
    def __init__(self, *, banner: bytes = b"220 slow.test ESMTP\r\n", banner_delay: float = 0.0,
                 trickle: float = 0.0, handshake_delay: float = 0.0, tls: ssl.SSLContext | None = None):
        self.banner, self.banner_delay, self.trickle = banner, banner_delay, trickle
        self.handshake_delay, self.tls = handshake_delay, tls
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.create_server((LOCALHOST, 0))
        self._listener.settimeout(0.1)
        self.host, self.port = LOCALHOST, self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "SlowServer":
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self.connections += 1
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._pause(self.handshake_delay) and self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            if self._pause(self.banner_delay):
                self._send_banner(conn)
            conn.settimeout(0.1)
            while not self._stop.is_set():
                try:
                    if not conn.recv(4096):
                        break
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
        except OSError:
            pass  # the client gave up: that is what these tests provoke
        finally:
            conn.close()

    def _send_banner(self, conn: socket.socket) -> None:
        if not self.trickle:
            conn.sendall(self.banner)
            return
        for byte in self.banner:
            if not self._pause(self.trickle):
                return
            conn.sendall(bytes([byte]))

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stopped; True if the server should go on."""
        return not self._stop.wait(seconds) if seconds else not self._stop.is_set()
