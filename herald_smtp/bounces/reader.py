"""The bounce reader's loop: one reader per deployment, by a Redis lock; passes over the inbox; waits between.

    BounceReader(settings, store, redis, metrics).run(stop)

Each pass records every mail in the inbox (recorder.py) and only then moves it to its folder, so a reader
killed at any point loses nothing: the mail is still in the inbox and the next reader records it again,
which the recorder makes harmless. A second reader (a rolling update, a copy started by hand) waits for the
lock instead of reading the same mails; the holder renews the lock between mails and while it waits, and
one that lost it (a long pause, Redis restarted) stops before the next mail.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from redis.exceptions import LockError

from ..config import Settings
from ..idempotency.base import Store, StoreUnavailable
from ..metrics import BounceMetrics
from ..redis_clients import ERRORS as REDIS_ERRORS
from . import mailbox as imap
from .recorder import Recorder

log = logging.getLogger("herald_smtp.bounces")

# The lock outlives a stalled holder by at most this; the holder renews it at least every third of it.
LOCK_SECONDS = 30.0
RENEW_SECONDS = LOCK_SECONDS / 3
# After a failed pass (IMAP or Redis down), the next try comes this much later.
RETRY_SECONDS = 5.0


@dataclass
class Health:
    """What /readyz reports: ready while the reader holds the lock and its last pass over the mailbox worked."""

    state: str = "starting"  # starting | waiting for the lock | reading | failing
    problem: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, state: str, problem: str = "") -> None:
        with self.lock:
            self.state, self.problem = state, problem

    @property
    def ready(self) -> bool:
        return self.state == "reading"


class BounceReader:
    def __init__(self, settings: Settings, store: Store, redis, metrics: BounceMetrics):
        mailbox = settings.bounce_mailbox
        if mailbox is None:
            raise ValueError("BOUNCE_IMAP_URL is not set")
        self.where = mailbox.where
        self.poll_seconds = settings.bounce_poll_seconds
        self.recorder = Recorder(settings, store, metrics)
        self.metrics = metrics
        self.health = Health()
        tls = imap.tls_context(settings.bounce_imap_tls_ca_file, settings.bounce_imap_tls_verify)
        self.open_mailbox = lambda: imap.open_mailbox(mailbox, tls)
        self.lock = redis.lock(settings.redis_key_prefix + "bounces:reader", timeout=LOCK_SECONDS,
                               thread_local=False)

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: take the lock (or wait for it), then read the mailbox while holding it."""
        told_waiting = False
        while not stop.is_set():
            if not self._acquire():
                if not told_waiting:
                    log.info("another bounce reader holds the lock; waiting", extra={"mailbox": self.where})
                    told_waiting = True
                self._set_health("waiting for the lock")
                stop.wait(RENEW_SECONDS)
                continue
            told_waiting = False
            log.info("bounce reader holds the lock; reading", extra={"mailbox": self.where})
            try:
                self._read_while_holding(stop)
            finally:
                self._release()

    def _read_while_holding(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                box = self.open_mailbox()
            except imap.ERRORS as exc:
                self._failed("imap", f"cannot open the bounce mailbox {self.where}: {type(exc).__name__}: {exc}")
                if not self._wait_holding(RETRY_SECONDS, stop):
                    return
                continue
            try:
                if not self._session(box, stop):
                    return
            finally:
                box.close()

    def _session(self, box: imap.ImapMailbox, stop: threading.Event) -> bool:
        """Passes on one IMAP session until it fails (True: try a new one) or the lock is lost or stop (False)."""
        while not stop.is_set():
            try:
                if not self.read_inbox(box):
                    return False
                self._set_health("reading")
                if not self._wait(box, stop):
                    return False
            except imap.ERRORS as exc:
                self._failed("imap", f"the bounce mailbox {self.where} failed: {type(exc).__name__}: {exc}")
                return self._wait_holding(RETRY_SECONDS, stop)
            except StoreUnavailable as exc:
                self._failed("store", f"the store failed; mails stay in the inbox until it answers: {exc}")
                return self._wait_holding(RETRY_SECONDS, stop)
        return False

    def _wait(self, box: imap.ImapMailbox, stop: threading.Event) -> bool:
        """Until a mail may have arrived (IDLE) or BOUNCE_POLL_SECONDS passed, renewing the lock at least every
        RENEW_SECONDS; False when the lock was lost or stop was set."""
        deadline = time.monotonic() + self.poll_seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            arrived = box.wait(min(left, RENEW_SECONDS), stop)
            if not self._renew():
                return False
            if arrived:
                return True
        return False

    def read_inbox(self, box: imap.ImapMailbox) -> bool:
        """One pass: record each waiting mail, then move it. The lock is renewed before each mail; False when
        it was lost."""
        for uid in box.waiting():
            if not self._renew():
                return False
            raw = box.fetch(uid)
            if raw is None:
                continue
            verdict = self.recorder.record(raw)
            box.move(uid, verdict.folder)
            self.metrics.notifications.labels(verdict.folder).inc()
            level = logging.INFO if verdict.folder == "Processed" else logging.WARNING
            log.log(level, f"bounce mail moved to {verdict.folder}: {verdict.reason}", extra={"imap_uid": uid})
        return True

    def _wait_holding(self, seconds: float, stop: threading.Event) -> bool:
        """Wait while keeping the lock; False when it was lost or stop was set."""
        return not stop.wait(seconds) and self._renew()

    def _failed(self, stage: str, problem: str) -> None:
        self.metrics.errors.labels(stage).inc()
        self._set_health("failing", problem)
        log.error(problem)

    def _set_health(self, state: str, problem: str = "") -> None:
        self.health.set(state, problem)
        self.metrics.ready.set(1 if self.health.ready else 0)

    def _acquire(self) -> bool:
        try:
            return bool(self.lock.acquire(blocking=False))
        except REDIS_ERRORS as exc:
            self._failed("store", f"cannot take the bounce reader's lock: {type(exc).__name__}: {exc}")
            return False

    def _renew(self) -> bool:
        try:
            self.lock.reacquire()
            return True
        except LockError:
            log.warning("the bounce reader lost its lock (another reader may hold it); stopping this pass")
        except REDIS_ERRORS as exc:
            self._failed("store", f"cannot renew the bounce reader's lock: {type(exc).__name__}: {exc}")
        self._set_health("waiting for the lock")
        return False

    def _release(self) -> None:
        try:
            self.lock.release()
        except (LockError, *REDIS_ERRORS):
            pass  # expired or taken over: nothing of ours to free
