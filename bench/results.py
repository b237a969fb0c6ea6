"""The figures of a run: one Measurement per (setup, round trip, PIPELINING, concurrency, generator).

Plain dataclasses with a JSON form, so the report and the plot can be made
again from a saved run (`python -m bench --from-json`), and tested without one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Setups, in the order the report lists them.
CONNECT_PER_MESSAGE = "connect-per-message"
WARM = "warm connection"
CEILING = "ceiling"
DOT_APART = "dot written apart"
DOT_APART_NODELAY = "dot written apart, TCP_NODELAY"
FLOOR = "HTTP floor"
HERALD = "herald-smtp"
REPLAY = "replay"
TRACED = "herald-smtp, tracing on"
# The cost of message status and the suppression list (issue #23), measured alternately in one run.
STATUS_BEFORE = "herald-smtp before status (d7d430c)"
STATUS_AFTER = "herald-smtp with status and suppression"
STATUS_NO_SUPPRESSION = "herald-smtp with status, suppression off"
STATUS_COST = (STATUS_BEFORE, STATUS_AFTER, STATUS_NO_SUPPRESSION)
# Run.remarks of that section: why the tree before was not measured, and the load average around it.
SKIPPED_BEFORE = "status-cost"
LOAD_DURING_STATUS_COST = "status-cost load"
# What DKIM signing costs (issue #24): one tree without a key, with RSA 2048, with Ed25519, measured alternately;
# and the signature alone, in the bench process.
DKIM_OFF = "herald-smtp, no DKIM"
DKIM_RSA = "herald-smtp, DKIM RSA 2048"
DKIM_ED25519 = "herald-smtp, DKIM Ed25519"
DKIM_COST = (DKIM_OFF, DKIM_RSA, DKIM_ED25519)
SIGN_OFF = "Mail.payload_for, no DKIM"
SIGN_RSA = "Mail.payload_for, DKIM RSA 2048"
SIGN_ED25519 = "Mail.payload_for, DKIM Ed25519"
SIGNING_ALONE = (SIGN_OFF, SIGN_RSA, SIGN_ED25519)
LOAD_DURING_DKIM_COST = "dkim load"
# One round trip a mail (issue #25): a server that offers CHUNKING too, and the smtplib baseline on that server.
CONNECT_PER_MESSAGE_CHUNKING = "connect-per-message, CHUNKING server"
HERALD_CHUNKING = "herald-smtp, CHUNKING server"
# CPU per send by feature set (issue #25): the tree before #25 and the current tree with features on and off, and the
# HTTP floor, all running at once and measured in turn.
FEATURES_BEFORE = "herald-smtp before #25 (c2011bb), every feature on"
FEATURES_NO_SUPPRESSION = "herald-smtp, suppression off"
FEATURES_PASSWORD = "herald-smtp, every feature on, password AUTH"
FEATURES_OAUTH = "herald-smtp, every feature on, XOAUTH2 token cached"
FEATURES_ED25519 = "herald-smtp, every feature on, DKIM Ed25519"
FEATURES_RSA = "herald-smtp, every feature on, DKIM RSA 2048"
FEATURES_FLOOR = "HTTP floor, in the feature-set rounds"
FEATURE_SETS = (FEATURES_BEFORE, FEATURES_NO_SUPPRESSION, FEATURES_PASSWORD, FEATURES_OAUTH, FEATURES_ED25519,
                FEATURES_RSA, FEATURES_FLOOR)
# Run.remarks of that section: why the tree before was not measured, and the load average around it.
SKIPPED_FEATURES_BEFORE = "features"
LOAD_DURING_FEATURES = "features load"
SETUPS = (CONNECT_PER_MESSAGE, WARM, DOT_APART, DOT_APART_NODELAY, CEILING, FLOOR, HERALD, TRACED, REPLAY,
          *STATUS_COST, *DKIM_COST, *SIGNING_ALONE, CONNECT_PER_MESSAGE_CHUNKING, HERALD_CHUNKING, *FEATURE_SETS)


@dataclass
class Latencies:
    """What a generator measured: requests, failures, wall time and latency percentiles (ms)."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_samples(cls, samples_s: list[float], errors: int, seconds: float) -> "Latencies":
        ordered = sorted(samples_s)
        return cls(len(ordered) + errors, errors, seconds, *(percentile(ordered, q) * 1000 for q in (50, 95, 99)))


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values; NaN when there are none."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Measurement:
    setup: str
    rtt_ms: float | None  # None: no SMTP involved (the HTTP floor)
    pipelining: bool | None  # the server's EHLO; None when no SMTP server is involved
    concurrency: int
    generator: str  # "wrk", "python" or "smtplib"
    latencies: Latencies | None
    peak_rss_mb: float | None = None  # max VmHWM over the gunicorn workers, when gunicorn was involved
    cpu_ms_per_request: float | None = None  # CPU of gunicorn's master and workers per request
    smtp: dict = field(default_factory=dict)  # the benchmark SMTP server's counts during the measurement
    redis: dict = field(default_factory=dict)  # Redis's counts during it (bench/status_cost.redis_delta), if read

    @property
    def label(self) -> str:
        parts = [self.setup]
        if self.pipelining is not None and self.setup in (HERALD,):
            parts.append("PIPELINING" if self.pipelining else "no PIPELINING")
        return ", ".join(parts)

    def round_trips_per_mail(self) -> float | None:
        mails = self.smtp.get("mails", 0)
        return self.smtp["reply_writes"] / mails if mails else None

    def transaction_round_trips_per_mail(self) -> float | None:
        mails = self.smtp.get("mails", 0)
        return self.smtp["transaction_writes"] / mails if mails else None


@dataclass
class Machine:
    cpu_model: str
    cores: int
    python: str
    wrk: str  # wrk's version line, or "" when wrk was not on PATH


@dataclass
class Run:
    machine: Machine
    command: str
    started: str  # UTC, ISO 8601
    wall_seconds: float
    measurements: list[Measurement]
    notes: list[str] = field(default_factory=list)
    remarks: dict[str, str] = field(default_factory=dict)  # per report section: why part of it was not measured

    def all(self, setup: str) -> list[Measurement]:
        return [m for m in self.measurements if m.setup == setup]

    def find(self, setup: str, *, rtt_ms=None, pipelining=None, concurrency=None, generator=None) -> Measurement | None:
        for m in self.measurements:
            if m.setup != setup:
                continue
            if rtt_ms is not None and m.rtt_ms != rtt_ms:
                continue
            if pipelining is not None and m.pipelining != pipelining:
                continue
            if concurrency is not None and m.concurrency != concurrency:
                continue
            if generator is not None and m.generator != generator:
                continue
            return m
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Run":
        data = json.loads(text)
        measurements = [Measurement(**{**m, "latencies": Latencies(**m["latencies"])}) for m in data["measurements"]]
        return cls(Machine(**data["machine"]), data["command"], data["started"], data["wall_seconds"],
                   measurements, data.get("notes", []), data.get("remarks", {}))

    @classmethod
    def load(cls, path: Path) -> "Run":
        return cls.from_json(path.read_text(encoding="utf-8"))
