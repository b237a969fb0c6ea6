"""Circuit breaker for one SMTP relay, per worker process: closed -> open -> half-open.

Which failures count and what callers see are in docs/DELIVERY.md; this
module owns the states and their thread-safe transitions.
"""

from __future__ import annotations

import logging
import math
import threading
import time

log = logging.getLogger("herald_smtp.mailer")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown_seconds: float, on_change=lambda state: None,
                 clock=time.monotonic, name: str = ""):
        self.name = name  # the relay's host:port, for the log lines
        self.threshold = threshold
        self.cooldown = cooldown_seconds
        self._on_change = on_change  # e.g. the circuit-state gauge
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> str:
        """The state a send would meet now: an open circuit past its cooldown reads half-open.

        Readiness relies on this: a pod taken out of rotation gets no sends that
        could move it out of "open", so the cooldown must end it by time alone.
        """
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a send start now? In half-open state, only one trial at a time."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                self._set(HALF_OPEN)
                log.info("smtp circuit half-open: letting one trial send through", extra={"relay": self.name})
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def retry_after(self) -> int:
        with self._lock:
            left = self.cooldown - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))

    def abandon(self) -> None:
        """The attempt ended without saying anything about the server (a bug of ours): free the trial."""
        with self._lock:
            self._trial_running = False

    def record(self, connection_failure: bool, cause: str = "") -> None:
        """The end of one attempt: did it fail to reach or talk to the server?"""
        with self._lock:
            self._trial_running = False
            if not connection_failure:
                if self._state != CLOSED:
                    log.info("smtp circuit closed: the SMTP server answers again", extra={"relay": self.name})
                    self._set(CLOSED)
                self._failures = 0
                return
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.threshold:
                if self._state != OPEN:
                    log.warning("smtp circuit open: failing fast", extra={
                        "relay": self.name, "consecutive_failures": self._failures,
                        "cooldown_seconds": self.cooldown, "cause": cause})
                    self._set(OPEN)
                self._opened_at = self._clock()

    def _set(self, state: str) -> None:
        self._state = state
        self._on_change(state)
