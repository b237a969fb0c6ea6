"""Reusable SMTP connections to one relay, per worker process, safe under gunicorn threads.

A connection pays TCP, TLS, EHLO and AUTH once and then carries mails until
it has been idle longer than SMTP_IDLE_SECONDS or has carried
SMTP_MAX_MESSAGES_PER_CONNECTION mails. Each thread takes a connection out
for one transaction and gives it back; idle ones wait in a LIFO stack, so
the warmest is reused first and the others age out. Inside a request a
connection is always closed without waiting for the QUIT reply
(transport.close_without_waiting), so retiring one costs the request nothing.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass

from ..config import Relay, Settings
from ..metrics import Metrics
from . import transport
from .tokens import TokenSource
from .deadline import DeadlineSMTP


@dataclass
class PooledConnection:
    conn: DeadlineSMTP
    reused: bool = False
    sent: int = 0
    last_used: float = 0.0  # pool clock; set on open and on every release


class ConnectionPool:
    def __init__(self, relay: Relay, settings: Settings, context: ssl.SSLContext | None, metrics: Metrics,
                 clock=time.monotonic, tokens: TokenSource | None = None):
        self.relay = relay
        self.settings = settings  # the pool limits, the same for every relay
        self.context = context
        self.metrics = metrics
        # OAuth: a new connection logs in with a fresh-enough token; pooled ones keep the session they have
        # while the server accepts it, whatever their token's age.
        self.tokens = tokens
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: list[PooledConnection] = []

    def acquire(self, deadline: float, span_attributes: dict | None = None) -> PooledConnection:
        """A warm connection if one is fit for use, else a new one (`span_attributes`: see transport)."""
        with self._lock:
            # Age out every idle connection, not just the top one: under steady
            # traffic the bottom of the stack would otherwise linger forever.
            fit: list[PooledConnection] = []
            stale: list[PooledConnection] = []
            for idle in self._idle:
                (fit if self._fit(idle) else stale).append(idle)
            self._idle = fit
            pooled = fit.pop() if fit else None
        for old in stale:
            transport.close_without_waiting(old.conn)
        if pooled is None:
            return self.open(deadline, span_attributes)
        pooled.reused = True
        return pooled

    def open(self, deadline: float, span_attributes: dict | None = None) -> PooledConnection:
        conn = transport.open_connection(self.relay, self.context, deadline, span_attributes, self.tokens)
        self.metrics.connections_opened.labels(self.relay.name).inc()
        return PooledConnection(conn, last_used=self._clock())

    def release(self, pooled: PooledConnection) -> None:
        """Give back a connection that is between transactions and healthy."""
        pooled.last_used = self._clock()
        if pooled.sent >= self.settings.smtp_max_messages_per_connection:
            transport.close_without_waiting(pooled.conn)
            return
        with self._lock:
            self._idle.append(pooled)

    def discard(self, pooled: PooledConnection) -> None:
        """Hang up on a connection in an unknown state (inside DATA: without a QUIT, see transport)."""
        transport.close_without_waiting(pooled.conn)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for pooled in idle:
            transport.close_quietly(pooled.conn)

    def _fit(self, pooled: PooledConnection) -> bool:
        return self._clock() - pooled.last_used < self.settings.smtp_idle_seconds
