"""An SMTP connection whose every wait is bounded by one deadline.

smtplib gives each connect step (the DNS lookup, TCP per resolved address,
the TLS handshake, the greeting) the whole timeout again, and sets the socket
timeout once per command, so a server that trickles its reply one byte at a
time can hold a request far past its budget. Here the DNS lookup runs in a
thread joined against the deadline, each TCP connect and the TLS handshake
get what is left, and DeadlineSMTP re-arms the socket timeout to what is left
before every read (unless it is within 10 ms of that already: set_timeout).
Expiry is raised as TimeoutError ("timed out").

It also refuses what it cannot read: a line that is not an SMTP reply
(NotSmtpReply) and a reply line longer than 8192 bytes (ReplyTooLong; smtplib
reports that as a 500 of the server's own, which it is not), and it knows
when the session is inside DATA (after a 354, until the next reply), where a
QUIT would be a line of the message.
"""

from __future__ import annotations

import io
import math
import smtplib
import socket
import ssl
import threading
import time

# RFC 5321 allows 512 octets a reply line; smtplib accepts up to 8192.
_MAX_LINE = 8192


class NotSmtpReply(smtplib.SMTPException):
    """The peer answered with something that is not an SMTP reply (e.g. an SSH or HTTP server on the port)."""

    def __init__(self, line: bytes):
        super().__init__(f"not an SMTP reply: {line[:80]!r}")
        self.line = line


class ReplyTooLong(smtplib.SMTPException):
    """A reply line longer than we read: the server's verdict is unknown (it may have said 250)."""

    def __init__(self):
        super().__init__(f"reply line longer than {_MAX_LINE} bytes")


def left(deadline: float) -> float:
    """Seconds until `deadline` (time.monotonic); TimeoutError once it has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    return remaining


# CPython's settimeout is a system call each time (it sets the socket's blocking mode again), and one that
# lets another thread take the GIL: a mail re-arms before every read and send. A timeout armed within this
# many seconds of what is left is kept: a wait can then outlast the deadline by at most this.
_REARM_SLACK = 0.01


def set_timeout(sock: socket.socket, seconds: float) -> None:
    """The socket's timeout at `seconds`, unless it is already there (within _REARM_SLACK above it)."""
    current = sock.gettimeout()
    if current is None or not seconds <= current <= seconds + _REARM_SLACK:
        sock.settimeout(seconds)


class DeadlineSMTP(smtplib.SMTP):
    """smtplib.SMTP that reads every reply against `deadline` and refuses replies that are not SMTP.

    Created unconnected; the caller puts an open socket in `sock` (see open_socket).
    """

    deadline = math.inf
    inside_data = False  # a 354 was the last reply: what we send now is message text
    _host: str  # smtplib's own (set in its connect(), which we skip): starttls() checks the certificate against it

    def getreply(self) -> tuple[int, bytes]:
        # smtplib's own reader, with two changes: each read gets only the time left, and a
        # line without a 2xx-5xx code ends the exchange instead of being read as code -1.
        if self.file is None:
            self.file = io.BufferedReader(_DeadlineReader(self))
        file = self.file
        lines = []
        while True:
            line = self._read_line(file)
            code, more = line[:3], line[3:4]
            if not (code.isdigit() and 200 <= int(code) <= 599 and more in (b" ", b"-", b"\r", b"\n", b"")):
                self.close()
                raise NotSmtpReply(line)
            lines.append(line[4:].strip(b" \t\r\n"))
            if more != b"-":
                self.inside_data = code == b"354"
                return int(code), b"\n".join(lines)

    def _read_line(self, file: io.BufferedReader) -> bytes:
        try:
            line = file.readline(_MAX_LINE + 1)
        except OSError as exc:
            self.close()
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}") from None
        if not line:
            self.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        if len(line) > _MAX_LINE:
            self.close()
            raise ReplyTooLong()
        return line


class _DeadlineReader(io.RawIOBase):
    """The raw stream under DeadlineSMTP's reader: every recv gets only what is left of the deadline."""

    def __init__(self, conn: DeadlineSMTP):
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        sock = self._conn.sock  # read each time: STARTTLS replaces the socket
        if sock is None:  # closed under the reader: read as a hang-up (getreply reports it so)
            raise smtplib.SMTPServerDisconnected("not connected")
        set_timeout(sock, left(self._conn.deadline))
        return sock.recv_into(buffer)


def resolve(host: str, port: int, deadline: float) -> list[tuple]:
    """getaddrinfo within the deadline. The resolver has no timeout of its own, so a name (not an IP
    literal) is looked up in a thread; one that outlives the deadline is left to finish on its own."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass  # a name, not an address
    outcome: dict = {}

    def lookup() -> None:
        try:
            outcome["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode, e.g. "a..b"
            outcome["error"] = exc

    thread = threading.Thread(target=lookup, name="smtp-dns", daemon=True)
    thread.start()
    thread.join(left(deadline))
    if thread.is_alive():
        raise TimeoutError("timed out")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["addresses"]


def connect_tcp(addresses: list[tuple], deadline: float) -> socket.socket:
    """Try each address in turn, each with what is left of the deadline."""
    error: OSError = OSError("no address to connect to")
    for family, type_, proto, _, address in addresses:
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(left(deadline))
            sock.connect(address)
            # The final dot is a small write of its own right after the message (the commit point sits
            # between them): with Nagle's algorithm it would wait for the server's delayed ACK, up to
            # 40 ms a mail.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def wrap_tls(sock: socket.socket, context: ssl.SSLContext, host: str, deadline: float) -> ssl.SSLSocket:
    """The implicit-TLS handshake; CPython bounds the whole handshake by the socket timeout."""
    try:
        sock.settimeout(left(deadline))
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
