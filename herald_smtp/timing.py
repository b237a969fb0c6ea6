"""How long a send may take, and what must outlive it: every time margin in one place.

The SMTP budget of a request is SMTP_TIMEOUT_SECONDS, or the caller's smaller
`timeout_seconds`. smtplib gives each connect step (TCP per resolved address,
the TLS handshake, the greeting) the whole remaining time, so a send can
overrun its budget by up to about OVERRUN_FACTOR times. Sized from that worst
case:

    reservation hold    worst case + HOLD_MARGIN_SECONDS: an idempotency
                        reservation must not expire while its owner still
                        talks to the server, or a duplicate would send again.
    gunicorn timeout    worst case + IDEMPOTENCY_WAIT_SECONDS + 15 s: a worker
                        busy with one slow send is not killed for it.
    graceful timeout    the same + 5 s: a SIGTERM lets in-flight sends finish.
"""

from __future__ import annotations

from .config import Settings

OVERRUN_FACTOR = 3
HOLD_MARGIN_SECONDS = 30.0
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
    return OVERRUN_FACTOR * budget


def reservation_hold_seconds(budget: float) -> float:
    return worst_case_send_seconds(budget) + HOLD_MARGIN_SECONDS


def gunicorn_timeouts(settings: Settings) -> tuple[int, int]:
    """(timeout, graceful_timeout) for gunicorn."""
    busy = worst_case_send_seconds(settings.smtp_timeout_seconds) + settings.idempotency_wait_seconds
    return (int(max(MIN_WORKER_TIMEOUT_SECONDS, busy + WORKER_TIMEOUT_MARGIN_SECONDS)),
            int(max(MIN_WORKER_TIMEOUT_SECONDS, busy + GRACEFUL_TIMEOUT_MARGIN_SECONDS)))
