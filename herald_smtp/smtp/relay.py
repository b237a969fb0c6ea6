"""One relay: its connection pool, its circuit breaker, and one send to it with retries.

    circuit breaker -> [attempt: pooled connection -> MAIL/RCPT/DATA] -> retry transient failures -> Attempt

The mailer (mailer.py) runs a RelaySender per relay, in order, and decides
whether the next relay is tried. Retries happen only while nothing of the
message was committed (before the final dot), with a short backoff, inside
the deadline the mailer gives this relay. A failure that fails over (the
"fails over" column of classify.RULES) is not retried here while another
relay can take the mail: the next relay is a better second try than the same
one. A pooled connection found dead at MAIL FROM is replaced at once, without
counting as a retry.

A rate or policy refusal (classify's "rate" evidence: Postfix's `450 4.7.1
... too much mail`) is never retried here: the relay would refuse again, and
every refusal adds to its error count for the session. That session is
closed at once (classify.spoils_session), so the next send starts a new one.

The breaker hears of a request once, after its last attempt on this relay
(breaker.py): a request whose three attempts failed is one failure.

A mail to a non-ASCII local part (its headers UTF-8, see sending/message.py)
is sent with SMTPUTF8. Such a mail never reaches a server that does not offer
SMTPUTF8: transport.mail_from stops before MAIL FROM, the answer is 400
invalid_destination (not retried, not counted by the breaker, the key
released), and the connection goes back to the pool as it was.

Each attempt is a span, smtp.attempt (tracing.py), with the relay, the
attempt number (1 for the first try), whether the connection was reused and
what the attempt came to; the phases' spans (transport.py) are its children.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .. import tracing
from ..addresses import mask_addresses
from ..config import Relay, Settings
from ..metrics import Metrics
from ..outcomes import Outcome, Result
from . import transport
from .breaker import CLOSED, OPEN, CircuitBreaker
from .classify import classify_failure, classify_reply, spoils_session
from .pool import ConnectionPool, PooledConnection
from .tokens import TokenSource
from .transport import MAIL, SmtpFailure, SmtpUtf8NotOffered

log = logging.getLogger("herald_smtp.mailer")

# Backoff before retry n (0-based): 0.2 s, 0.4 s, 0.8 s ... kept short, the caller waits.
_BACKOFF_SECONDS = 0.2
# A retry is only worth starting with at least this much of the budget left.
_MIN_ATTEMPT_SECONDS = 0.5


class SendAborted(Exception):
    """Raised by a before_dot callback: hang up before the final dot and answer `result` instead."""

    def __init__(self, result: Result):
        super().__init__(result.message)
        self.result = result


@dataclass(frozen=True)
class Attempt:
    """What one relay made of a send."""

    result: Result  # carries the relay's name
    fails_over: bool  # nothing was transmitted and nothing said about the recipient: the next relay may try


@dataclass(frozen=True)
class _Tried:
    """One attempt, as the retry loop and the breaker see it."""

    attempt: Attempt
    connection_failure: bool | None  # for the breaker; None: the attempt said nothing about the server
    retry: bool = False
    cause: str = ""


class RelaySender:
    def __init__(self, relay: Relay, settings: Settings, metrics: Metrics, clock=time.monotonic):
        self.relay = relay
        self.name = relay.name
        self.settings = settings  # retries, pool limits and circuit settings: the same for every relay
        self.metrics = metrics
        # `clock` drives only the breaker's cooldown and the pool's idle ageing; SMTP
        # deadlines stay on time.monotonic, as sockets time out in real time.
        self.tokens = TokenSource(relay.oauth, relay.name, metrics) if relay.oauth is not None else None
        self.pool = ConnectionPool(relay, settings, transport.tls_context(relay), metrics, clock=clock,
                                   tokens=self.tokens)
        self.breaker = CircuitBreaker(settings.smtp_circuit_threshold, settings.smtp_circuit_cooldown_seconds,
                                      on_change=self._show_state, clock=clock, name=relay.name)
        metrics.add_relay(relay.name)
        self._show_state(CLOSED)

    def send(self, payload: bytes | Callable[[], bytes], message_id: str, recipient: str, deadline: float,
             before_dot, last: bool) -> Attempt:
        """Send within `deadline`, retries included; `last`: no other relay can take the mail after this one.

        `payload` may be what makes the bytes (a DKIM signature): it is called only when the breaker lets
        this relay be tried, once for all the attempts.

        `before_dot()` runs just before each attempt's final dot; raising SendAborted there stops the
        send with nothing transmitted (the server discards a DATA that never ends).
        The breaker hears of the request once, when its attempts are over: one request, one vote.
        """
        permit = self.breaker.allow()
        if permit is None:
            return Attempt(self.circuit_open(), fails_over=True)
        try:
            if callable(payload):
                payload = payload()
            tried = self._attempts(payload, message_id, recipient, deadline, before_dot, last)
        except BaseException:
            self.breaker.abandon(permit)  # a bug of ours says nothing about the server: decide nothing
            raise
        if tried.connection_failure is None:
            self.breaker.abandon(permit)
        else:
            self.breaker.record(permit, tried.connection_failure, cause=tried.cause)
        return tried.attempt

    def _attempts(self, payload: bytes, message_id: str, recipient: str, deadline: float, before_dot,
                  last: bool) -> _Tried:
        """The first attempt and its retries; what the last one came to."""
        for attempt in range(self.settings.smtp_retries + 1):
            attributes = self._span_attributes(attempt)
            with tracing.span("smtp.attempt", attributes):
                tried = self._try(attempt, payload, message_id, recipient, deadline, before_dot, last, attributes)
            # Other requests' failures opened the circuit meanwhile: stop here, as they now fail fast.
            if not tried.retry or self.breaker.state == OPEN:
                return tried
            time.sleep(_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable: the last attempt never asks for a retry")

    def _try(self, attempt: int, payload: bytes, message_id: str, recipient: str, deadline: float, before_dot,
             last: bool, span_attributes: dict | None) -> _Tried:
        """One attempt: what it made of the send, and whether to retry after the backoff."""
        try:
            code, reply = self._attempt(payload, message_id, recipient, deadline, before_dot, span_attributes)
        except SmtpFailure as failure:
            verdict = classify_failure(failure)
            outcome = Attempt(replace(verdict.result, relay=self.name), verdict.fails_over)
            _trace_result(outcome.result)
            # A failure that fails over goes to the next relay at once, while there is one.
            retry = (verdict.retry and not (verdict.fails_over and not last) and self._retry_fits(attempt, deadline))
            if retry:
                self.metrics.retries.inc()
                log.info("smtp retry", extra={"relay": self.name, "attempt": attempt + 1, "phase": failure.phase,
                                               "smtp_code": failure.code, "errmsg": mask_addresses(failure.detail)})
            return _Tried(outcome, verdict.connection_failure, retry, failure.detail)
        except SendAborted as aborted:
            _trace_result(aborted.result)
            return _Tried(Attempt(aborted.result, fails_over=False), connection_failure=None)
        outcome = Attempt(replace(classify_reply(code, reply, message_id), relay=self.name), fails_over=False)
        _trace_result(outcome.result)
        return _Tried(outcome, connection_failure=False)

    def _span_attributes(self, attempt: int) -> dict | None:
        """What the attempt's span and its phases' spans carry; None (nothing built) while tracing is off."""
        if not tracing.active():
            return None
        return {"herald.smtp.relay": self.name, "herald.smtp.attempt": attempt + 1}

    def close(self) -> None:
        self.pool.close_all()

    def circuit_open(self) -> Result:
        """The answer while this relay's circuit is open (the mailer also names skipped relays with it)."""
        return Result(Outcome.CIRCUIT_OPEN, f"SMTP circuit breaker is open for {self.name} after repeated "
                      "connection failures; failing fast", retry_after=self.breaker.retry_after(), relay=self.name)

    def _show_state(self, state: str) -> None:
        self.metrics.set_circuit_state(self.name, state)

    def _retry_fits(self, attempt: int, deadline: float) -> bool:
        if attempt >= self.settings.smtp_retries:
            return False
        return deadline - time.monotonic() - _BACKOFF_SECONDS * 2**attempt >= _MIN_ATTEMPT_SECONDS

    def _attempt(self, payload: bytes, message_id: str, recipient: str, deadline: float, before_dot,
                 span_attributes: dict | None = None) -> tuple[int, str]:
        opening = _with_reuse(span_attributes, False)
        pooled = self.pool.acquire(deadline, opening)
        try:
            return self._transmit(pooled, payload, message_id, recipient, deadline, before_dot, span_attributes)
        except SmtpFailure as failure:
            if not (pooled.reused and _dead_before_mail(failure)):
                raise
        # The server closed the idle connection (or said 421 at MAIL FROM): replace it quietly.
        log.debug("smtp connection was dead at MAIL FROM; reconnecting", extra={"relay": self.name})
        tracing.add_event("reconnect", {"reason": "pooled connection dead at MAIL FROM"})
        return self._transmit(self.pool.open(deadline, opening), payload, message_id, recipient, deadline,
                              before_dot, span_attributes)

    def _transmit(self, pooled: PooledConnection, payload: bytes, message_id: str, recipient: str, deadline: float,
                  before_dot, span_attributes: dict | None = None) -> tuple[int, str]:
        if span_attributes is not None:
            tracing.set_attributes({"herald.smtp.connection_reused": pooled.reused})
        try:
            code, reply = transport.transmit(pooled.conn, self.relay.envelope_sender, recipient, payload, deadline,
                                             before_dot, _with_reuse(span_attributes, pooled.reused), envid=message_id)
        except SmtpFailure as failure:
            self._after_failure(pooled, failure)
            raise
        except BaseException:
            self.pool.discard(pooled)  # the session is in an unknown state: never hand it out again
            raise
        pooled.sent += 1
        if pooled.reused:
            self.metrics.connections_reused.labels(self.name).inc()
        self.pool.release(pooled)
        return code, reply

    def _after_failure(self, pooled: PooledConnection, failure: SmtpFailure) -> None:
        # No SMTPUTF8: stopped before MAIL FROM, the session is as it was. A rate or policy refusal spoils
        # the session (classify.spoils_session): closed at once, not waiting for QUIT's reply. Another
        # refusal (a reply code, but not 421 "closing") leaves the session usable after RSET; anything
        # else leaves it in an unknown state.
        if _not_started(failure):
            self.pool.release(pooled)
        elif spoils_session(failure):
            transport.close_without_waiting(pooled.conn)
        elif failure.code not in (None, 421) and transport.reset(pooled.conn):
            self.pool.release(pooled)
        else:
            self.pool.discard(pooled)


def _with_reuse(span_attributes: dict | None, reused: bool) -> dict | None:
    return None if span_attributes is None else {**span_attributes, "herald.smtp.connection_reused": reused}


def _trace_result(result: Result) -> None:
    """On the attempt's span: what the attempt came to; ERROR unless the mail was accepted."""
    if not tracing.active():
        return
    tracing.set_attributes({"herald.outcome": result.outcome.value, "herald.smtp.reply_code": result.smtp_code,
                            "herald.smtp.failed_phase": result.phase})
    if not result.ok:
        tracing.fail(mask_addresses(result.message or result.outcome.value))


def _dead_before_mail(failure: SmtpFailure) -> bool:
    """Lost or 421 at MAIL FROM: the server closed the idle session; but not a 421 naming a rate, which a
    new session would meet as well."""
    return (failure.phase == MAIL and (failure.code is None or failure.code == 421) and not _not_started(failure)
            and not spoils_session(failure))


def _not_started(failure: SmtpFailure) -> bool:
    """We stopped before MAIL FROM (the server lacks SMTPUTF8): nothing was sent on the connection."""
    return isinstance(failure.error, SmtpUtf8NotOffered)
