"""The benchmark SMTP server: STARTTLS, AUTH PLAIN/LOGIN (and XOAUTH2 on demand), optional PIPELINING and
CHUNKING, a simulated round trip, counts.

    python -m bench.smtp_server --port P --control-port C --cert F --key F [--delay-ms 20] [--no-pipelining]
                                [--chunking] [--oauth-token-prefix at-]

One asyncio process (so it shares no GIL with the load generator), cheap per
command, and faithful where a client's round trips are concerned:

- Every read is one arrival. All complete commands in it are answered
  together, in one write, `delay` after the read: the delay is per round
  trip, not per command, as a real server's replies to a pipelined group
  (RFC 2920) travel back together. The greeting (it stands for the TCP
  connect as well) and the TLS handshake cost one delay each.
- PIPELINING is in the EHLO unless --no-pipelining. The server answers a
  pipelined group either way; what a client does with the EHLO is the point.
- CHUNKING (RFC 3030: BDAT) is in the EHLO only with --chunking, so runs
  without it stay comparable with earlier ones. BDAT takes exactly the
  octets it announces, as they are (no dot-stuffing); `BDAT n LAST` ends
  the mail and is answered like the final dot. A BDAT without a sender
  and a recipient is refused after its octets are read, so the session
  stays in step. Each BDAT is counted (bdat_commands).
- AUTH is offered only after STARTTLS, as real submission servers do; MAIL
  before AUTH is 530.
- XOAUTH2 is offered only with --oauth-token-prefix. The check is minimal:
  the user must be --user and the bearer token must begin with the prefix
  (the token endpoint runs in another process, so the server cannot ask it
  whether it issued the token). A refusal is XOAUTH2's: a 334 with a JSON
  error, then 535 once the client answers it. Logins are counted
  (oauth_auths); the token itself is never kept.
- Mail bodies are not kept: each is counted, only the last one is held
  (for the tests), and one over MAX_MESSAGE_BYTES is refused with 552.

The control port speaks lines: `stats` answers the counts as one JSON line,
`reset` sets them to zero, `last` answers the last mail as JSON. Nothing is
logged; the process prints `ready` once both ports listen and stops on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import signal
import ssl
import sys
from dataclasses import asdict, dataclass, field

MAX_LINE_BYTES = 4096
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
READ_BYTES = 65536

# Replies to these belong to a mail transaction; the rest (greeting, EHLO, STARTTLS, AUTH, QUIT) to the session.
TRANSACTION_VERBS = {"MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "."}


@dataclass
class Counts:
    connections: int = 0
    tls_handshakes: int = 0
    auths: int = 0
    auth_failures: int = 0
    oauth_auths: int = 0  # of the auths, those with XOAUTH2
    mails: int = 0
    message_bytes: int = 0
    commands: int = 0
    reads: int = 0
    multi_command_reads: int = 0  # reads that carried more than one command: the proof of pipelining
    reply_writes: int = 0  # one per round trip
    transaction_writes: int = 0  # writes carrying a reply to MAIL, RCPT, DATA, BDAT, the final dot, RSET or NOOP
    bdat_commands: int = 0  # BDAT chunks announced (CHUNKING)
    protocol_errors: int = 0


@dataclass
class LastMail:
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class ServerOptions:
    user: str
    password: str
    delay: float  # seconds per round trip
    pipelining: bool
    tls: ssl.SSLContext | None
    chunking: bool = False
    oauth_token_prefix: str = ""  # XOAUTH2 is offered when set: a bearer token must begin with it
    hostname: str = "bench.invalid"


class Stop(Exception):
    """The session is over (QUIT, a fatal error, or the peer went away)."""


class Session:
    """One SMTP connection: a state machine fed by reads, answering each read in one write."""

    def __init__(self, options: ServerOptions, counts: Counts, last: LastMail,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.options, self.counts, self.last = options, counts, last
        self.reader, self.writer = reader, writer
        self.buffer = bytearray()
        self.replies: list[bytes] = []
        self.transaction_reply = False
        self.secure = False
        self.authenticated = False
        self.auth_step = None  # a coroutine-free continuation for AUTH's 334 challenges
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.message: bytearray | None = None  # while receiving DATA; begins with CRLF to find a leading dot
        self.scan_from = 0
        self.too_big = False
        # BDAT (CHUNKING): the octets the current chunk still owes, its refusal (read, then refused), LAST,
        # and the mail's chunks so far.
        self.chunk_left: int | None = None
        self.chunk_refusal: str | None = None
        self.chunk_last = False
        self.chunks: bytearray | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._send_after(loop.time(), [f"220 {self.options.hostname} ESMTP bench\r\n".encode()], False)
        try:
            while True:
                data = await self.reader.read(READ_BYTES)
                if not data:
                    return
                arrived = loop.time()
                self.counts.reads += 1
                self.buffer.extend(data)
                start_tls = False
                try:
                    start_tls = self._consume()
                except Stop:
                    await self._flush(arrived)
                    return
                if start_tls:
                    # The ClientHello must stay in the socket for the TLS layer, not land in our reader.
                    self.writer.transport.pause_reading()
                await self._flush(arrived)
                if start_tls:
                    await self._start_tls(arrived)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return

    # --- reading

    def _consume(self) -> bool:
        """Answer every complete item in the buffer; True when STARTTLS must follow the write."""
        commands = 0
        try:
            while True:
                if self.chunk_left is not None:
                    if not self._chunk_part():
                        break
                    continue
                if self.message is not None:
                    if not self._message_part():
                        break
                    continue
                end = self.buffer.find(b"\n")
                if end < 0:
                    if len(self.buffer) > MAX_LINE_BYTES:
                        self.counts.protocol_errors += 1
                        self._reply("500 5.5.2 line too long")
                        raise Stop
                    break
                line = bytes(self.buffer[:end]).rstrip(b"\r")
                del self.buffer[:end + 1]
                commands += 1
                if self._line(line.decode("utf-8", "replace")):
                    # Anything sent after STARTTLS in the same read is discarded (RFC 3207).
                    self.buffer.clear()
                    return True
        finally:
            self.counts.commands += commands
            if commands > 1:
                self.counts.multi_command_reads += 1
        return False

    def _message_part(self) -> bool:
        """Move buffered bytes into the message; True when its final dot was found."""
        message = self.message
        message.extend(self.buffer)
        self.buffer.clear()
        end = message.find(b"\r\n.\r\n", self.scan_from)
        if end < 0:
            self.scan_from = max(0, len(message) - 4)
            if len(message) > MAX_MESSAGE_BYTES:
                self.too_big = True
                del message[2:len(message) - 4]  # keep only what the end marker could start in
                self.scan_from = 0
            return False
        self.buffer.extend(message[end + 5:])
        body = bytes(message[2:end + 2])
        self.message = None
        self.transaction_reply = True
        if self.too_big:
            self._reply("552 5.3.4 message too big")
        else:
            self._accept(body.replace(b"\r\n..", b"\r\n."))  # undo dot-stuffing
            self._reply("250 2.0.0 queued")
        self.sender, self.recipients, self.too_big = None, [], False
        return True

    def _chunk_part(self) -> bool:
        """Move the current BDAT chunk's octets out of the buffer; True when the chunk is complete (answered)."""
        take = min(self.chunk_left, len(self.buffer))
        if self.chunk_refusal is None and not self.too_big:
            self.chunks.extend(self.buffer[:take])
            if len(self.chunks) > MAX_MESSAGE_BYTES:
                self.too_big = True
                self.chunks.clear()
        del self.buffer[:take]
        self.chunk_left -= take
        if self.chunk_left:
            return False
        self.chunk_left = None
        self.transaction_reply = True
        if self.chunk_refusal is not None:
            self._reply(self.chunk_refusal)
            if self.chunk_last:
                self._reset_transaction()
        elif not self.chunk_last:
            self._reply(f"250 2.0.0 {len(self.chunks)} octets received")
        elif self.too_big:
            self._reply("552 5.3.4 message too big")
            self._reset_transaction()
        else:
            self._accept(bytes(self.chunks))
            self._reply("250 2.0.0 queued")
            self._reset_transaction()
        return True

    def _accept(self, body: bytes) -> None:
        """A whole mail arrived: count it and keep it as the last one."""
        self.counts.mails += 1
        self.counts.message_bytes += len(body)
        self.last.sender, self.last.recipients = self.sender or "", list(self.recipients)
        self.last.message = body.decode("utf-8", "replace")

    def _line(self, line: str) -> bool:
        if self.auth_step is not None:
            step, self.auth_step = self.auth_step, None
            step(line)
            return False
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        if verb in TRANSACTION_VERBS:
            self.transaction_reply = True
        handler = getattr(self, f"_cmd_{verb.lower()}", None) if verb.isalpha() else None
        if handler is None:
            self.counts.protocol_errors += 1
            self._reply("500 5.5.1 command not recognized")
            return False
        return bool(handler(argument.strip()))

    # --- commands

    def _cmd_ehlo(self, argument: str) -> None:
        lines = [self.options.hostname, "8BITMIME", "SMTPUTF8", f"SIZE {MAX_MESSAGE_BYTES}", "ENHANCEDSTATUSCODES"]
        if self.options.pipelining:
            lines.append("PIPELINING")
        if self.options.chunking:
            lines.append("CHUNKING")
        if self.options.tls is not None and not self.secure:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN XOAUTH2" if self.options.oauth_token_prefix else "AUTH PLAIN LOGIN")
        self._reset_transaction()
        self._reply(*(f"250{'-' if i < len(lines) - 1 else ' '}{text}" for i, text in enumerate(lines)))

    def _cmd_helo(self, argument: str) -> None:
        self._reset_transaction()
        self._reply(f"250 {self.options.hostname}")

    def _cmd_starttls(self, argument: str) -> bool:
        if self.options.tls is None or self.secure:
            self._reply("502 5.5.1 STARTTLS not available")
            return False
        self._reply("220 2.0.0 ready to start TLS")
        return True

    def _cmd_auth(self, argument: str) -> None:
        if not self._auth_offered():
            self._reply("503 5.5.1 AUTH not available" if self.secure or self.options.tls is None
                        else "530 5.7.0 must issue STARTTLS first")
            return
        if self.authenticated:
            self._reply("503 5.5.1 already authenticated")
            return
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            if initial:
                self._auth_plain(initial)
            else:
                self.auth_step = self._auth_plain
                self._reply("334 ")
        elif mechanism == "LOGIN":
            if initial:
                self._auth_login_user(initial)
            else:
                self.auth_step = self._auth_login_user
                self._reply("334 VXNlcm5hbWU6")
        elif mechanism == "XOAUTH2" and self.options.oauth_token_prefix:
            if initial:
                self._auth_xoauth2(initial)
            else:
                self.auth_step = self._auth_xoauth2
                self._reply("334 ")
        else:
            self._reply("504 5.5.4 unrecognized authentication type")

    def _auth_plain(self, response: str) -> None:
        decoded = _b64(response)
        parts = decoded.split("\0") if decoded is not None else []
        self._auth_result(len(parts) == 3 and parts[1] == self.options.user and parts[2] == self.options.password)

    def _auth_login_user(self, response: str) -> None:
        user = _b64(response)

        def password(answer: str) -> None:
            self._auth_result(user == self.options.user and _b64(answer) == self.options.password)

        self.auth_step = password
        self._reply("334 UGFzc3dvcmQ6")

    def _auth_xoauth2(self, response: str) -> None:
        """user=U^Aauth=Bearer T^A^A: U must be --user, T must begin with the prefix (and hold more than it)."""
        fields = dict(part.partition("=")[::2] for part in (_b64(response) or "").split("\x01") if part)
        scheme, _, token = fields.get("auth", "").partition(" ")
        prefix = self.options.oauth_token_prefix
        if (fields.get("user") == self.options.user and scheme == "Bearer" and token.startswith(prefix)
                and len(token) > len(prefix)):
            self.counts.oauth_auths += 1
            self._auth_result(True)
            return
        # As Google and Microsoft do: the error as a JSON challenge; the client's empty answer gets the 535.
        self.auth_step = lambda _answer: self._auth_result(False)
        self._reply("334 " + base64.b64encode(b'{"status":"401","schemes":"Bearer"}').decode())

    def _auth_result(self, ok: bool) -> None:
        if ok:
            self.authenticated = True
            self.counts.auths += 1
            self._reply("235 2.7.0 authentication successful")
        else:
            self.counts.auth_failures += 1
            self._reply("535 5.7.8 authentication credentials invalid")

    def _cmd_mail(self, argument: str) -> None:
        if self.options.user and not self.authenticated:
            self._reply("530 5.7.0 authentication required")
        elif self.sender is not None:
            self._reply("503 5.5.1 nested MAIL command")
        elif not argument.upper().startswith("FROM:"):
            self._reply("501 5.5.4 syntax: MAIL FROM:<address>")
        else:
            self.sender = _path(argument[5:])
            self._reply("250 2.1.0 ok")

    def _cmd_rcpt(self, argument: str) -> None:
        if self.sender is None:
            self._reply("503 5.5.1 need MAIL first")
        elif not argument.upper().startswith("TO:"):
            self._reply("501 5.5.4 syntax: RCPT TO:<address>")
        else:
            self.recipients.append(_path(argument[3:]))
            self._reply("250 2.1.5 ok")

    def _cmd_data(self, argument: str) -> None:
        # In a pipelined group a refused MAIL or RCPT makes DATA fail here, as RFC 2920 expects.
        if self.sender is None or not self.recipients:
            self._reply("554 5.5.1 no valid recipients")
            return
        self.message = bytearray(b"\r\n")
        self.scan_from = 0
        self._reply("354 end data with <CR><LF>.<CR><LF>")

    def _cmd_bdat(self, argument: str) -> None:
        words = argument.split()
        if (not self.options.chunking or not 1 <= len(words) <= 2 or not words[0].isdigit()
                or (len(words) == 2 and words[1].upper() != "LAST")):
            # Without a size we cannot tell the chunk from the commands after it: the session is over.
            self.counts.protocol_errors += 1
            self._reply("501 5.5.4 syntax: BDAT <size> [LAST]")
            raise Stop
        self.counts.bdat_commands += 1
        self.chunk_left, self.chunk_last = int(words[0]), len(words) == 2
        if self.options.user and not self.authenticated:
            self.chunk_refusal = "530 5.7.0 authentication required"
        elif self.sender is None or not self.recipients:
            # In a pipelined group a refused MAIL or RCPT makes BDAT fail here, as DATA would.
            self.chunk_refusal = "554 5.5.1 no valid recipients"
        else:
            self.chunk_refusal = None
            if self.chunks is None:
                self.chunks = bytearray()

    def _cmd_rset(self, argument: str) -> None:
        self._reset_transaction()
        self._reply("250 2.0.0 ok")

    def _cmd_noop(self, argument: str) -> None:
        self._reply("250 2.0.0 ok")

    def _cmd_vrfy(self, argument: str) -> None:
        self._reply("252 2.1.5 cannot verify")

    def _cmd_quit(self, argument: str) -> None:
        self._reply("221 2.0.0 bye")
        raise Stop

    # --- helpers

    def _auth_offered(self) -> bool:
        return bool(self.options.user) and (self.secure or self.options.tls is None)

    def _reset_transaction(self) -> None:
        self.sender, self.recipients = None, []
        self.chunks, self.too_big = None, False

    def _reply(self, *lines: str) -> None:
        self.replies.append("".join(f"{line}\r\n" for line in lines).encode())

    async def _flush(self, arrived: float) -> None:
        replies, self.replies = self.replies, []
        transaction, self.transaction_reply = self.transaction_reply, False
        await self._send_after(arrived, replies, transaction)

    async def _send_after(self, arrived: float, replies: list[bytes], transaction: bool) -> None:
        if not replies:
            return
        await self._wait_until(arrived + self.options.delay)
        self.writer.write(b"".join(replies))
        self.counts.reply_writes += 1
        if transaction:
            self.counts.transaction_writes += 1
        await self.writer.drain()

    async def _start_tls(self, arrived: float) -> None:
        # The handshake costs one more round trip (TLS 1.3: ClientHello -> ServerHello..Finished).
        await self._wait_until(arrived + 2 * self.options.delay)
        await self.writer.start_tls(self.options.tls)
        self.secure, self.authenticated = True, False
        self._reset_transaction()
        self.counts.tls_handshakes += 1

    @staticmethod
    async def _wait_until(moment: float) -> None:
        remaining = moment - asyncio.get_running_loop().time()
        if remaining > 0:
            await asyncio.sleep(remaining)


def _b64(text: str) -> str | None:
    try:
        return base64.b64decode(text.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _path(text: str) -> str:
    address = text.strip().split(" ", 1)[0]
    return address[1:-1] if address.startswith("<") and address.endswith(">") else address


class BenchServer:
    """The SMTP listener and its control listener, with the counts they share."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.counts = Counts()
        self.last = LastMail()

    async def serve_smtp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        try:
            await Session(self.options, self.counts, self.last, reader, writer).run()
        finally:
            writer.close()

    async def serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                command = line.strip().decode("ascii", "replace")
                if command == "stats":
                    answer = asdict(self.counts)
                elif command == "reset":
                    self.counts.__init__()
                    answer = {"reset": True}
                elif command == "last":
                    answer = asdict(self.last)
                else:
                    answer = {"error": "commands: stats, reset, last"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def serve(options: ServerOptions, host: str, port: int, control_port: int) -> None:
    server = BenchServer(options)
    smtp = await asyncio.start_server(server.serve_smtp, host, port, backlog=512, limit=MAX_LINE_BYTES * 4)
    control = await asyncio.start_server(server.serve_control, host, control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    async with smtp, control:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--cert", help="PEM certificate chain for STARTTLS (without it: no STARTTLS)")
    parser.add_argument("--key", help="PEM private key for STARTTLS")
    parser.add_argument("--user", default="", help="AUTH user (empty: no AUTH)")
    parser.add_argument("--password-env", default="BENCH_SMTP_PASSWORD",
                        help="environment variable holding the AUTH password (kept off the command line)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="simulated round trip per reply")
    parser.add_argument("--no-pipelining", action="store_true", help="leave PIPELINING out of the EHLO")
    parser.add_argument("--chunking", action="store_true", help="offer CHUNKING (BDAT, RFC 3030) in the EHLO")
    parser.add_argument("--oauth-token-prefix", default="",
                        help="offer XOAUTH2 and accept a bearer token that begins with this (empty: no XOAUTH2)")
    args = parser.parse_args(argv)
    options = ServerOptions(
        user=args.user, password=os.environ.get(args.password_env, ""), delay=args.delay_ms / 1000.0,
        pipelining=not args.no_pipelining, chunking=args.chunking, oauth_token_prefix=args.oauth_token_prefix,
        tls=server_tls(args.cert, args.key) if args.cert else None,
    )
    asyncio.run(serve(options, args.host, args.port, args.control_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
