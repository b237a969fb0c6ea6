"""`herald-smtp bounces`: the bounce reader, a long-running process of its own (one per deployment).

Reads BOUNCE_IMAP_URL's inbox (bounces/reader.py), records each notification on the message's status in the
shared store (REDIS_URL: without it statuses live inside the service's process, out of this one's reach),
and serves /healthz, /readyz and /metrics on BOUNCE_READER_PORT. SIGTERM or SIGINT ends it after the mail
in hand: the lock is freed for the next reader.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from .. import redis_clients
from ..config import Settings
from ..idempotency.store import open_store
from ..metrics import BounceMetrics
from ..bounces import http
from ..bounces.reader import BounceReader

log = logging.getLogger("herald_smtp.bounces")


def run_bounces(settings: Settings) -> int:
    problem = _unusable(settings)
    if problem:
        print(f"herald-smtp bounces: {problem}", file=sys.stderr)
        return 2
    assert settings.redis_target is not None and settings.bounce_mailbox is not None
    metrics = BounceMetrics()
    store = open_store(settings.redis_target, settings.redis_key_prefix)
    reader = BounceReader(settings, store, redis_clients.client(settings.redis_target), metrics)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = http.serve(settings.host, settings.bounce_reader_port, reader.health, metrics)
    log.info("starting the bounce reader", extra={"mailbox": settings.bounce_mailbox.redacted(),
                                                  "store": settings.redis_target.describe(),
                                                  "port": settings.bounce_reader_port,
                                                  "poll_seconds": settings.bounce_poll_seconds})
    try:
        reader.run(stop)
    finally:
        server.shutdown()
    log.info("bounce reader stopped")
    return 0


def _unusable(settings: Settings) -> str:
    if settings.bounce_mailbox is None:
        return "BOUNCE_IMAP_URL is not set: expected the mailbox SMTP_BOUNCE_ADDRESS receives, e.g. " \
               "imaps://user:password@imap.example.com/INBOX"
    if settings.redis_target is None:
        return "REDIS_URL is not set: the reader records bounces in the store the service shares (without Redis " \
               "the statuses live inside the service's own process)"
    return ""
