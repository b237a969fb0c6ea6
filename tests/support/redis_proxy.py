"""A TCP proxy in front of a real Redis that holds back or loses the reply to one chosen command.

The idempotency store's hardest moments are a command Redis has executed whose reply comes late
(slower than the budget, or than redis-py's socket timeout) or never (the connection drops after
Redis ran it, and redis-py's reconnect retries it). CLIENT PAUSE and SIGSTOP stop Redis *before*
it executes; this proxy lets the command through and then acts on its reply:

    with RedisReplyProxy(redis_url) as proxy:
        proxy.delay_reply(b'"committing":true', seconds=1.8)   # the commit runs, its reply comes late
        proxy.drop_reply(b"fp-retried")                       # the reserve runs, its reply is lost

A trigger fires on the first client->Redis chunk that contains the marker, `times` times. Loopback
only; one thread per direction per connection; leaving the `with` block ends them.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .net import LOCALHOST, LoopbackListener


@dataclass
class _Trigger:
    marker: bytes
    action: str  # "delay" or "drop"
    seconds: float
    times: int


class RedisReplyProxy(LoopbackListener):
    def __init__(self, redis_url: str):
        super().__init__()
        target = urlsplit(redis_url)
        self._target = (target.hostname or LOCALHOST, target.port or 6379)
        self._db = target.path.strip("/") or "0"
        self.fired = 0  # how many triggers have fired
        self._triggers: list[_Trigger] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/{self._db}"

    def delay_reply(self, marker: bytes, seconds: float, times: int = 1) -> None:
        """Forward the command that contains `marker`, then hold its reply back for `seconds`."""
        self._add(_Trigger(marker, "delay", seconds, times))

    def drop_reply(self, marker: bytes, times: int = 1) -> None:
        """Forward the command that contains `marker`, then close the connection instead of replying."""
        self._add(_Trigger(marker, "drop", 0.0, times))

    def _add(self, trigger: _Trigger) -> None:
        with self._lock:
            self._triggers.append(trigger)

    def __enter__(self) -> "RedisReplyProxy":
        self.start_listening()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_listening()

    def _accepted(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        session = _Session(client, upstream)
        self._spawn(self._requests, session)
        self._spawn(self._replies, session)

    def _fire(self, chunk: bytes) -> _Trigger | None:
        with self._lock:
            for trigger in self._triggers:
                if trigger.times > 0 and trigger.marker in chunk:
                    trigger.times -= 1
                    self.fired += 1
                    return trigger
        return None

    def _requests(self, session: "_Session") -> None:
        """client -> Redis; a chunk with a marker arms its action on the replies that follow it."""
        while not self._stop.is_set():
            chunk = _recv(session.client)
            if chunk is None:
                session.close()
                return
            if not chunk:
                continue
            trigger = self._fire(chunk)
            if trigger is not None:
                session.armed = trigger
                session.armed_at = time.monotonic()
            if not _send(session.upstream, chunk):
                session.close()
                return

    def _replies(self, session: "_Session") -> None:
        """Redis -> client; the first reply after an armed command is delayed or dropped."""
        while not self._stop.is_set():
            chunk = _recv(session.upstream)
            if chunk is None:
                session.close()
                return
            if not chunk:
                continue
            trigger, session.armed = session.armed, None
            if trigger is not None and trigger.action == "drop":
                session.close()
                return
            if trigger is not None:
                pause = session.armed_at + trigger.seconds - time.monotonic()
                if self._stop.wait(max(0.0, pause)):
                    return
            if not _send(session.client, chunk):
                session.close()
                return


class _Session:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.armed: _Trigger | None = None
        self.armed_at = 0.0
        for sock in (client, upstream):
            sock.settimeout(0.2)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _recv(sock: socket.socket) -> bytes | None:
    """Some bytes, b"" when nothing came in 0.2 s, None once the connection is gone."""
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return b""
    except OSError:
        return None
    return data or None


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False
