"""A raw SMTP server on 127.0.0.1 that answers from a script, for replies aiosmtpd will not give.

aiosmtpd cannot answer with a 9,000-character reply line or advertise an AUTH
mechanism it does not implement; this can. It speaks just enough SMTP for
herald-smtp: a greeting, EHLO (with the `extensions` given), MAIL, RCPT, DATA
and the message up to its final dot, BDAT (RFC 3030: offer "CHUNKING"; the
chunk's octets are read as they are), RSET, NOOP, QUIT. Every command gets its
default reply unless `script` holds one for it: script["rcpt"] = [reply, ...]
answers the next RCPT commands (across connections) with those replies in
turn, then the default again. Keys: "ehlo", "mail", "rcpt", "data", "dot"
(the reply to the final dot), "bdat" (the reply once the chunk is read),
"auth", "quit"; a reply is bytes (its line breaks included) or a Reply with
a delay. HANG_UP as a reply closes the connection instead of answering. A
BDAT whose MAIL or RCPT was refused is refused by default (554), as a real
server does with a pipelined group.

Observations: connections, received (every byte each connection sent, in
order), reads (each connection's reads, as they arrived: what came in one
write), commands (the command lines, outside DATA and BDAT chunks) and
messages (the content of each DATA, dot-stuffing undone, whose final dot,
or of each BDAT ... LAST, was answered 2xx: what a real server stores). hang_up_idle() closes every
open connection, after a farewell such as a 421, as a server does with idle
sessions.
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
    hang_up: bool = False  # close the connection instead of answering


HANG_UP = Reply(b"", hang_up=True)


_DEFAULTS = {
    "mail": b"250 2.1.0 Ok\r\n", "rcpt": b"250 2.1.5 Ok\r\n", "data": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "dot": b"250 2.0.0 Ok: queued\r\n",
    "bdat": b"250 2.0.0 Ok: queued\r\n", "rset": b"250 2.0.0 Ok\r\n", "noop": b"250 2.0.0 Ok\r\n",
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
        self.reads: list[list[bytes]] = []
        self._open: list[socket.socket] = []
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
            self.reads.append([])
            self._open.append(conn)
            seen, reads = self.received[-1], self.reads[-1]
        self._spawn(self._serve, conn, seen, reads)

    def hang_up_idle(self, farewell: bytes = b"") -> None:
        """Close every open connection (after `farewell`, e.g. a 421): what a server does with idle sessions."""
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            try:
                if farewell:
                    conn.sendall(farewell)
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, conn: socket.socket, seen: bytearray, reads: list[bytes]) -> None:
        lines = _Lines(conn, seen, self._stop, reads)
        transaction = _Transaction()
        try:
            conn.sendall(b"220 scripted.test ESMTP\r\n")
            while (line := lines.next()) is not None:
                with self._lock:
                    self.commands.append(line)
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].decode("ascii", "replace").lower()
                if verb == "bdat":
                    if not self._chunk(conn, lines, line, transaction):
                        return
                    continue
                reply = self._reply(verb)
                if reply is None:
                    return  # HANG_UP
                transaction.note(verb, reply)
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

    def _chunk(self, conn: socket.socket, lines: "_Lines", line: bytes, transaction: "_Transaction") -> bool:
        """A BDAT: read its octets, then answer; False once the connection is to end."""
        words = line.split()
        if len(words) not in (2, 3) or not words[1].isdigit():
            conn.sendall(b"501 5.5.4 syntax: BDAT <size> [LAST]\r\n")
            return False  # the chunk's end cannot be found: the session is over
        chunk = lines.octets(int(words[1]))
        if chunk is None:
            return False
        last = len(words) == 3
        transaction.chunks += chunk
        if not transaction.accepted():
            with self._lock:
                scripted = bool(self.script.get("bdat"))
            reply = self._reply("bdat") if scripted else b"554 5.5.1 no valid recipients\r\n"
        elif last:
            reply = self._reply("bdat")
        else:
            reply = f"250 2.0.0 {len(transaction.chunks)} octets received\r\n".encode()
        if reply is None:
            return False  # HANG_UP
        if last and transaction.accepted() and reply[:1] == b"2":
            with self._lock:
                self.messages.append(bytes(transaction.chunks))
        if last or reply[:1] != b"2":
            transaction.__init__()
        conn.sendall(reply)
        return True

    def _message(self, conn: socket.socket, lines: "_Lines") -> bool:
        content = bytearray()
        while (line := lines.next()) is not None:
            if line == b".":
                reply = self._reply("dot")
                if reply is None:
                    return False  # HANG_UP
                if reply[:1] == b"2":
                    with self._lock:
                        self.messages.append(bytes(content))
                conn.sendall(reply)
                return True
            content += (line[1:] if line.startswith(b".") else line) + b"\r\n"  # undo dot-stuffing
        return False

    def _reply(self, verb: str) -> bytes | None:
        """The reply to `verb`; None for HANG_UP."""
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
            if reply.hang_up:
                return None
            reply = reply.text
        return reply


class _Transaction:
    """Whether MAIL and a RCPT were accepted on this connection, and the BDAT chunks so far."""

    def __init__(self) -> None:
        self.mail = self.rcpt = False
        self.chunks = bytearray()

    def note(self, verb: str, reply: bytes) -> None:
        if verb == "mail":
            self.mail = reply[:1] == b"2"
            self.rcpt = False
        elif verb == "rcpt":
            self.rcpt = self.rcpt or reply[:1] == b"2"
        elif verb in ("rset", "ehlo", "helo"):
            self.__init__()

    def accepted(self) -> bool:
        return self.mail and self.rcpt


class _Lines:
    """The CRLF-terminated lines of one connection; every byte also goes to `seen`."""

    def __init__(self, conn: socket.socket, seen: bytearray, stop: threading.Event, reads: list[bytes]):
        self.conn, self.seen, self.stop, self.reads = conn, seen, stop, reads
        self.buffer = b""
        conn.settimeout(0.1)

    def next(self) -> bytes | None:
        """The next line without its CRLF; None once the client hung up or the server stops."""
        while b"\r\n" not in self.buffer:
            if not self._read():
                return None
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def octets(self, size: int) -> bytes | None:
        """The next `size` bytes, as they are (a BDAT chunk); None once the client hung up or the server stops."""
        while len(self.buffer) < size:
            if not self._read():
                return None
        chunk, self.buffer = self.buffer[:size], self.buffer[size:]
        return chunk

    def _read(self) -> bool:
        while not self.stop.is_set():
            try:
                chunk = self.conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return False
            if not chunk:
                return False
            self.seen += chunk
            self.reads.append(chunk)
            self.buffer += chunk
            return True
        return False
