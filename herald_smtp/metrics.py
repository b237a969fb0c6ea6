"""Prometheus metrics: what is counted, and /metrics exposition.

One Metrics object per app, on its own registry (so several apps can live in
one test process). Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set before
prometheus_client is first imported (see tools/serve.py), every worker writes
its values there, and /metrics sums them across workers with
MultiProcessCollector over the directory given to Metrics.
"""

from __future__ import annotations

import glob
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
# A multiprocess value file starts with how much of it is used (4 bytes) and padding (4 bytes).
_FILE_HEADER_BYTES = 8
# SMTP sends take milliseconds to tens of seconds.
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)


class Metrics:
    def __init__(self, multiprocess_dir: str = "") -> None:
        self.multiprocess_dir = multiprocess_dir  # "" outside gunicorn: this process's values only
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("herald_smtp_requests", "HTTP requests by endpoint, status and error_code",
                                ["endpoint", "status", "error_code"], registry=r)
        self.send_duration = Histogram("herald_smtp_send_duration_seconds",
                                       "Time spent sending one mail over SMTP, retries and failovers included, "
                                       "by outcome and the relay that gave the answer",
                                       ["outcome", "relay"], buckets=_DURATION_BUCKETS, registry=r)
        self.replays = Counter("herald_smtp_idempotent_replays", "Requests answered from a stored idempotency record",
                               registry=r)
        self.conflicts = Counter("herald_smtp_idempotency_conflicts",
                                 "409 idempotency_conflict answers by reason", ["reason"], registry=r)
        self.store_errors = Counter("herald_smtp_idempotency_store_errors",
                                    "Idempotency store failures by operation", ["operation"], registry=r)
        self.rate_limited = Counter("herald_smtp_rate_limited",
                                    "Sends refused with 429 rate_limited, by the limit that refused them "
                                    "(per_recipient, global)", ["limit"], registry=r)
        self.rate_limit_store_errors = Counter("herald_smtp_rate_limit_store_errors",
                                               "Rate limit store failures (the send then followed "
                                               "IDEMPOTENCY_FAILURE_MODE)", registry=r)
        self.suppressions = Counter("herald_smtp_suppressions",
                                    "Suppression list events: added (a recipient refused permanently), refused (a "
                                    "send to a suppressed recipient, answered without SMTP), lifted (DELETE)",
                                    ["event"], registry=r)
        # relay: host:port of the SMTP relay (the primary or a SMTP_FALLBACK_URLS entry).
        self.connections_opened = Counter("herald_smtp_smtp_connections_opened", "New SMTP connections, by relay",
                                          ["relay"], registry=r)
        self.connections_reused = Counter("herald_smtp_smtp_connections_reused",
                                          "Mails sent over an already open SMTP connection, by relay", ["relay"],
                                          registry=r)
        self.failovers = Counter("herald_smtp_smtp_failovers",
                                 "Sends moved from one relay to the next before anything was transmitted",
                                 ["from", "to"], registry=r)
        self.retries = Counter("herald_smtp_smtp_retries", "SMTP attempts retried after a transient failure",
                               registry=r)
        # OAuth 2.0 SMTP AUTH (smtp/tokens.py). result: ok, refused (the endpoint refused our client or grant: a
        # setup error), unavailable (unreachable, timed out, 5xx).
        self.token_fetches = Counter("herald_smtp_oauth_token_fetches", "OAuth token requests by relay and result",
                                     ["relay", "result"], registry=r)
        self.token_age = Histogram("herald_smtp_oauth_token_age_seconds",
                                   "Age of the OAuth access token when a connection logs in with it, by relay",
                                   ["relay"], buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200), registry=r)
        # livemax: the worst state among live workers (0 closed, 1 half-open, 2 open).
        self.circuit_state = Gauge("herald_smtp_smtp_circuit_state",
                                   "SMTP circuit breaker per relay: 0 closed, 1 half-open, 2 open (worst live worker)",
                                   ["relay"], registry=r, multiprocess_mode="livemax")
        # What the last /readyz answered on this instance (the probe hits one worker at a time):
        # livemostrecent is the latest answer of a live worker. 0 until a probe fails, so a fresh
        # instance does not count as failing.
        self.not_ready = Gauge("herald_smtp_not_ready",
                               "1 when the last /readyz answer was 503 not_ready, else 0",
                               registry=r, multiprocess_mode="livemostrecent")
        # SMTP_TIMEOUT_SECONDS, so that an alert on slow sends can compare with the budget in force.
        self.smtp_timeout = Gauge("herald_smtp_smtp_timeout_seconds",
                                  "SMTP_TIMEOUT_SECONDS: the time budget of one send's SMTP exchange",
                                  registry=r, multiprocess_mode="livemax")

    def add_relay(self, relay: str) -> None:
        """The per-relay counters at 0 from the start: a labelled series exists only once its label is used, and
        a rate() or an alert over a series that appears late sees nothing before it."""
        self.connections_opened.labels(relay)
        self.connections_reused.labels(relay)

    def set_circuit_state(self, relay: str, state: str) -> None:
        self.circuit_state.labels(relay).set(CIRCUIT_STATES[state])

    def exposition(self) -> tuple[bytes, str]:
        """The text format, summed over all gunicorn workers when running multiprocess."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        _SettledFilesCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _SettledFilesCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's collector over the workers' files, but those a worker is creating at this very moment:
    such a file is empty until prometheus_client sizes it, holds no value yet, and reading it fails the whole
    scrape (struct.error: a 500 from /metrics, seen when a worker's first use of a metric races a scrape)."""

    def collect(self):
        files = [path for path in glob.glob(os.path.join(self._path, "*.db")) if _settled(path)]
        return self.merge(files, accumulate=True)


def _settled(path: str) -> bool:
    try:
        return os.path.getsize(path) >= _FILE_HEADER_BYTES
    except OSError:  # removed meanwhile (mark_process_dead)
        return False


class BounceMetrics:
    """The bounce reader's metrics (`herald-smtp bounces`, a process of its own), served on its /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bounces = Counter("herald_smtp_bounces", "Delivery status notifications recorded, by kind: hard (a "
                               "permanent failure), soft (the relay gave up after temporary failures), delayed, "
                               "delivered", ["kind"], registry=r)
        self.notifications = Counter("herald_smtp_bounce_notifications",
                                     "Mails read from the bounce mailbox, by the folder they went to (Processed, "
                                     "Unrecognised)", ["folder"], registry=r)
        self.suppressions = Counter("herald_smtp_suppressions", "Suppression list events: added (a hard bounce "
                                    "about the address)", ["event"], registry=r)
        self.errors = Counter("herald_smtp_bounce_reader_errors", "Bounce reader passes that failed, by what failed "
                              "(imap, store)", ["stage"], registry=r)
        self.ready = Gauge("herald_smtp_bounce_reader_ready", "1 while the reader holds the lock and its last pass "
                           "over the mailbox worked", registry=r)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
