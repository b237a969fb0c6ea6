"""Loopback networking for the test servers."""

from __future__ import annotations

import socket
import threading

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


class LoopbackListener:
    """A TCP listener on 127.0.0.1, its accept loop and a thread per connection, all ended by stop_listening().

    Subclasses say what a connection gets in `_accepted(conn)` (usually `self._spawn(self._serve, conn)`).
    """

    def __init__(self) -> None:
        self._listener = socket.create_server((LOCALHOST, 0))
        self._listener.settimeout(0.1)  # so the accept loop sees the stop
        self.host, self.port = LOCALHOST, self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start_listening(self) -> None:
        self._spawn(self._accept_loop)

    def stop_listening(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError
