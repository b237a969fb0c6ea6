"""Circuit breaker for one SMTP relay, per worker process: closed -> open -> half-open.

Which failures count and what callers see are in docs/DELIVERY.md; this
module owns the states, the cooldown and their thread-safe transitions.

One request is one vote: a request asks allow() once for its permit and,
after all its attempts on the relay, record()s once whether it ended in a
connection failure, so SMTP_RETRIES does not multiply a short outage into
SMTP_CIRCUIT_THRESHOLD failures. The cooldown starts short and doubles on
each failed trial, up to SMTP_CIRCUIT_COOLDOWN_SECONDS: a relay back after a
restart gets its trial within seconds, one that stays down is asked ever
more rarely. It starts short again once the circuit closes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger("herald_smtp.mailer")

# The first cooldown after the circuit opens (or SMTP_CIRCUIT_COOLDOWN_SECONDS if smaller).
FIRST_COOLDOWN_SECONDS = 2.0


class State(StrEnum):
    """A str: the metric (metrics.CIRCUIT_STATES) and /readyz show the value."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


@dataclass(frozen=True)
class Permit:
    """allow()'s yes, handed back to record() or abandon(): was this request the half-open trial?"""

    trial: bool = False


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown_seconds: float, on_change=lambda state: None,
                 clock=time.monotonic, name: str = ""):
        self.name = name  # the relay's host:port, for the log lines
        self.threshold = threshold
        self.max_cooldown = cooldown_seconds
        self.first_cooldown = min(FIRST_COOLDOWN_SECONDS, cooldown_seconds)
        self._on_change = on_change  # e.g. the circuit-state gauge
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._cooldown = self.first_cooldown
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> State:
        """The state a send would meet now: an open circuit past its cooldown reads half-open.

        Readiness relies on this: a pod taken out of rotation gets no sends that
        could move it out of "open", so the cooldown must end it by time alone.
        """
        with self._lock:
            return HALF_OPEN if self._cooled_down() else self._state

    @property
    def cooldown(self) -> float:
        """The cooldown in force: the current one while open, the next one to come while closed."""
        with self._lock:
            return self._cooldown

    def allow(self) -> Permit | None:
        """May a request send now? In half-open state only one request, the trial, at a time."""
        with self._lock:
            if self._cooled_down():
                self._set(HALF_OPEN)
                log.info("smtp circuit half-open: letting one trial send through", extra={"relay": self.name})
            if self._state == CLOSED:
                return Permit()
            if self._state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return Permit(trial=True)
            return None

    def retry_after(self) -> int:
        """Whole seconds until the current cooldown ends (at least 1)."""
        with self._lock:
            left = self._cooldown - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))

    def abandon(self, permit: Permit) -> None:
        """The request ended without saying anything about the server (a bug of ours, a send stopped
        before the dot): decide nothing, and free the trial."""
        with self._lock:
            if permit.trial:
                self._trial_running = False

    def record(self, permit: Permit, connection_failure: bool, cause: str = "") -> None:
        """The end of one request on this relay, all its attempts done: did it fail to reach or talk to
        the server?"""
        with self._lock:
            if permit.trial:
                self._trial_running = False
            elif self._state != CLOSED:
                return  # began before the circuit opened: from now on only the trial decides
            if not connection_failure:
                self._close()
                return
            self._failures += 1
            if permit.trial:  # the relay is still down: wait longer before the next trial
                self._open(min(self._cooldown * 2, self.max_cooldown), cause)
            elif self._failures >= self.threshold:
                self._open(self.first_cooldown, cause)

    def _cooled_down(self) -> bool:
        return self._state == OPEN and self._clock() - self._opened_at >= self._cooldown

    def _close(self) -> None:
        if self._state != CLOSED:
            log.info("smtp circuit closed: the SMTP server answers again", extra={"relay": self.name})
            self._set(CLOSED)
        self._failures = 0
        self._cooldown = self.first_cooldown

    def _open(self, cooldown: float, cause: str) -> None:
        self._cooldown = cooldown
        self._opened_at = self._clock()
        log.warning("smtp circuit open: failing fast", extra={
            "relay": self.name, "consecutive_failures": self._failures, "cooldown_seconds": cooldown,
            "cause": cause})
        self._set(OPEN)

    def _set(self, state: State) -> None:
        self._state = state
        self._on_change(state)
