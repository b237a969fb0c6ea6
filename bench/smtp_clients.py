"""The raw smtplib baselines: what a client without HTTP, idempotency or pipelining gets from the same server.

- connect-per-message: TCP, greeting, EHLO, STARTTLS, EHLO, AUTH, the mail and QUIT for every mail;
- warm connection: one open, authenticated connection, one mail after another (MAIL, RCPT, DATA, the dot:
  a round trip each, the best a non-pipelining client can do);
- ceiling: the same, one persistent connection per client thread, at the concurrency of the herald-smtp runs;
- dot written apart: a warm connection that writes the message and its final dot in two sends, as a client
  with a commit point just before the dot does (herald-smtp), with and without TCP_NODELAY: with Nagle's
  algorithm the dot waits for the server's (delayed) ACK of the message.

smtplib never pipelines, whatever the EHLO says.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass

from . import workload
from .loadgen import CLIENT_TIMEOUT, closed_loop
from .results import Latencies

MESSAGE = (f"From: Herald <{workload.SENDER}>\r\nTo: {workload.RECIPIENT}\r\nSubject: {workload.SUBJECT}\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{workload.TEXT}\r\n").encode()


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    ca_file: str
    user: str
    password: str

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def open_session(target: SmtpTarget, context: ssl.SSLContext) -> smtplib.SMTP:
    conn = smtplib.SMTP(target.host, target.port, local_hostname="bench.client", timeout=CLIENT_TIMEOUT)
    conn.ehlo()
    conn.starttls(context=context)
    conn.ehlo()
    conn.login(target.user, target.password)
    return conn


def send_one(conn: smtplib.SMTP) -> bool:
    return not conn.sendmail(workload.SENDER, [workload.RECIPIENT], MESSAGE)


class ConnectPerMessage:
    def __init__(self, target: SmtpTarget):
        self.target, self.context = target, target.context()

    def call(self, seq: int) -> bool:
        conn = open_session(self.target, self.context)
        try:
            return send_one(conn)
        finally:
            conn.quit()

    def close(self) -> None:
        pass


class WarmConnection:
    def __init__(self, target: SmtpTarget):
        self.conn = open_session(target, target.context())

    def call(self, seq: int) -> bool:
        return send_one(self.conn)

    def close(self) -> None:
        try:
            self.conn.quit()
        except (OSError, smtplib.SMTPException):
            self.conn.close()


class DotWrittenApart(WarmConnection):
    def __init__(self, target: SmtpTarget, nodelay: bool):
        super().__init__(target)
        if nodelay:
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, seq: int) -> bool:
        conn = self.conn
        if conn.mail(workload.SENDER)[0] != 250 or conn.rcpt(workload.RECIPIENT)[0] != 250:
            return False
        conn.putcmd("data")
        if conn.getreply()[0] != 354:
            return False
        conn.send(MESSAGE)  # ends with CRLF and has no line starting with a dot
        conn.send(b".\r\n")
        return conn.getreply()[0] == 250


def dot_written_apart(target: SmtpTarget, nodelay: bool, max_requests: int, max_seconds: float) -> Latencies:
    return closed_loop(1, max_requests, max_seconds, lambda _: DotWrittenApart(target, nodelay))


def connect_per_message(target: SmtpTarget, max_requests: int, max_seconds: float) -> Latencies:
    return closed_loop(1, max_requests, max_seconds, lambda _: ConnectPerMessage(target))


def warm_connections(target: SmtpTarget, concurrency: int, max_requests: int, max_seconds: float) -> Latencies:
    """Each thread opens its connection before it takes its first request: setup is not in the latencies."""
    return closed_loop(concurrency, max_requests, max_seconds, lambda _: WarmConnection(target))
