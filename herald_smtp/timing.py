"""How long a send may take, and what must outlive it: every time margin in one place.

The SMTP budget of a request is SMTP_TIMEOUT_SECONDS, or the caller's smaller
`timeout_seconds`. It bounds the whole exchange, retries included: the DNS
lookup, each TCP connect, the TLS handshake, the greeting and every read
(smtp/deadline.py). Only housekeeping may run past it (RSET or QUIT, each
capped at 1 s), hence DEADLINE_SLACK_SECONDS. Sized from that worst case:

    reservation hold    worst case + HOLD_MARGIN_SECONDS: how long a key stays
                        reserved, and the hold deadline a committing record
                        carries. A hold that ends too early cannot send twice
                        (the owner's commit finds the key taken and hangs up
                        before the final dot); the margin covers clock skew
                        between replicas, which compare hold deadlines.
    answer              worst case + IDEMPOTENCY_WAIT_SECONDS for a duplicate
                        that waits: Herald's client gives up after 30 s (or
                        never), so startup warns when this exceeds 30 s.
    gunicorn timeout    the answer + 15 s: a worker busy with one slow send is
                        not killed for it.
    graceful timeout    the answer + 5 s: a SIGTERM lets in-flight sends finish.
    record lifetime     the reservation hold + IDEMPOTENCY_WAIT_SECONDS at least:
                        IDEMPOTENCY_TTL_SECONDS below it is refused at startup.
                        A committing record (written after the reservation)
                        then outlives its owner's hold, so a duplicate never
                        finds the key free while the owner may still be
                        sending, nor after a crash at the commit point; and a
                        final record outlives every duplicate still waiting
                        for it.

And rfc3339(): how every time the service writes is written (log lines, status
records, suppression entries, bounce events).
"""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config checks IDEMPOTENCY_TTL_SECONDS against minimum_ttl_seconds() at load time
    from .config import Settings

DEADLINE_SLACK_SECONDS = 1.0
HOLD_MARGIN_SECONDS = 5.0
HERALD_CLIENT_TIMEOUT_SECONDS = 30.0
WORKER_TIMEOUT_MARGIN_SECONDS = 15
GRACEFUL_TIMEOUT_MARGIN_SECONDS = 5
# gunicorn's own defaults; we never go below them.
MIN_WORKER_TIMEOUT_SECONDS = 30


def send_budget(settings: Settings, requested: float | None) -> float:
    """The SMTP time budget: SMTP_TIMEOUT_SECONDS, or less if the caller asked."""
    if requested:
        return min(settings.smtp_timeout_seconds, requested)
    return settings.smtp_timeout_seconds


def worst_case_send_seconds(budget: float) -> float:
    return budget + DEADLINE_SLACK_SECONDS


def reservation_hold_seconds(budget: float) -> float:
    return worst_case_send_seconds(budget) + HOLD_MARGIN_SECONDS


def minimum_ttl_seconds(smtp_timeout_seconds: float, idempotency_wait_seconds: float) -> int:
    """The shortest IDEMPOTENCY_TTL_SECONDS the idempotency protocol allows (see the module docstring)."""
    return math.ceil(reservation_hold_seconds(smtp_timeout_seconds) + idempotency_wait_seconds)


def worst_case_answer_seconds(settings: Settings) -> float:
    """The longest a caller waits for an answer with these settings: a duplicate that waits, then sends."""
    return worst_case_send_seconds(settings.smtp_timeout_seconds) + settings.idempotency_wait_seconds


def gunicorn_timeouts(settings: Settings) -> tuple[int, int]:
    """(timeout, graceful_timeout) for gunicorn."""
    busy = worst_case_answer_seconds(settings)
    return (int(max(MIN_WORKER_TIMEOUT_SECONDS, busy + WORKER_TIMEOUT_MARGIN_SECONDS)),
            int(max(MIN_WORKER_TIMEOUT_SECONDS, busy + GRACEFUL_TIMEOUT_MARGIN_SECONDS)))


def rfc3339(seconds: float, timespec: str = "milliseconds") -> str:
    """A time.time() value as RFC 3339 in UTC: 2026-12-01T08:52:38.562Z (timespec="seconds": ...38Z).

    What datetime.fromtimestamp(seconds, utc).isoformat(timespec) writes (microseconds rounded as it rounds
    them, then cut to milliseconds), with the date and time of day made once a second: every log line writes one.
    """
    whole = math.floor(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if timespec == "seconds":
        return f"{_utc_second(whole)}Z"
    return f"{_utc_second(whole)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
