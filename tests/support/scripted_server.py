"""A raw SMTP server on 127.0.0.1 that answers from a script, for replies aiosmtpd will not give.

aiosmtpd cannot answer with a 9,000-character reply line or advertise an AUTH
mechanism it does not implement; this can. It speaks just enough SMTP for
herald-smtp: a greeting, EHLO (with the `extensions` given), MAIL, RCPT, DATA
and the message up to its final dot, RSET, NOOP, QUIT. Every command gets its
default reply unless `script` holds one for it: script["rcpt"] = [reply, ...]
answers the next RCPT commands (across connections) with those replies in
turn, then the default again. Keys: "ehlo", "mail", "rcpt", "data", "dot"
(the reply to the final dot), "auth", "quit"; a reply is bytes (its line
breaks included) or a Reply with a delay.

Observations: connections, received (every byte each connection sent, in
order), commands (the command lines, outside DATA) and messages (the content
of each DATA whose final dot was answered 2xx: what a real server stores).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from .net import LoopbackListener


@dataclass
class Reply:
    text: bytes
    delay: float = 0.0  # seconds to stall before answering


_DEFAULTS = {
    "mail": b"250 2.1.0 Ok\r\n", "rcpt": b"250 2.1.5 Ok\r\n", "data": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "dot": b"250 2.0.0 Ok: queued\r\n", "rset": b"250 2.0.0 Ok\r\n", "noop": b"250 2.0.0 Ok\r\n",
    "auth": b"535 5.7.8 Authentication credentials invalid\r\n", "quit": b"221 2.0.0 Bye\r\n",
}


class ScriptedServer(LoopbackListener):
    def __init__(self, *, extensions: tuple[str, ...] = ("PIPELINING",),
                 script: dict[str, list[bytes | Reply]] | None = None):
        super().__init__()
        self.extensions = extensions
        self.script = {verb: list(replies) for verb, replies in (script or {}).items()}
        self.connections = 0
        self.received: list[bytearray] = []
        self.commands: list[bytes] = []
        self.messages: list[bytes] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "ScriptedServer":
        self.start_listening()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_listening()

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until every connection so far has ended (the client hung up or quit)."""
        deadline = time.monotonic() + timeout
        while any(thread.is_alive() for thread in self._threads[1:]) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _accepted(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self.received.append(bytearray())
            seen = self.received[-1]
        self._spawn(self._serve, conn, seen)

    def _serve(self, conn: socket.socket, seen: bytearray) -> None:
        lines = _Lines(conn, seen, self._stop)
        try:
            conn.sendall(b"220 scripted.test ESMTP\r\n")
            while (line := lines.next()) is not None:
                with self._lock:
                    self.commands.append(line)
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].decode("ascii", "replace").lower()
                reply = self._reply(verb)
                if verb == "data" and reply.startswith(b"354"):
                    conn.sendall(reply)
                    if not self._message(conn, lines):
                        return  # hung up inside DATA: nothing stored
                    continue
                conn.sendall(reply)
                if verb == "quit":
                    return
        except OSError:
            pass  # the client hung up
        finally:
            conn.close()

    def _message(self, conn: socket.socket, lines: "_Lines") -> bool:
        content = bytearray()
        while (line := lines.next()) is not None:
            if line == b".":
                reply = self._reply("dot")
                if reply[:1] == b"2":
                    with self._lock:
                        self.messages.append(bytes(content))
                conn.sendall(reply)
                return True
            content += line + b"\r\n"
        return False

    def _reply(self, verb: str) -> bytes:
        if verb in ("ehlo", "helo") and not self.script.get("ehlo"):
            extensions = [b"scripted.test", *(e.encode() for e in self.extensions)]
            return b"".join(b"250" + (b" " if i == len(extensions) - 1 else b"-") + e + b"\r\n"
                            for i, e in enumerate(extensions))
        with self._lock:
            queued = self.script.get(verb)
            reply = queued.pop(0) if queued else _DEFAULTS.get(verb, b"502 5.5.2 command not recognized\r\n")
        if isinstance(reply, Reply):
            if self._stop.wait(reply.delay):
                return b""
            reply = reply.text
        return reply


class _Lines:
    """The CRLF-terminated lines of one connection; every byte also goes to `seen`."""

    def __init__(self, conn: socket.socket, seen: bytearray, stop: threading.Event):
        self.conn, self.seen, self.stop = conn, seen, stop
        self.buffer = b""
        conn.settimeout(0.1)

    def next(self) -> bytes | None:
        """The next line without its CRLF; None once the client hung up or the server stops."""
        while b"\r\n" not in self.buffer:
            if self.stop.is_set():
                return None
            try:
                chunk = self.conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self.seen += chunk
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line
