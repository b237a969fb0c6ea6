"""The mailer: sends one Mail through the relays, in order, and returns a Result.

    first relay whose circuit is not open -> RelaySender.send -> [fails over?] -> next relay ... -> Result

`Mailer.send` is the only entry point the service uses. The primary relay
(SMTP_HOST ...) comes first, then SMTP_FALLBACK_URLS in order; each relay
has its own pool and breaker (relay.py). A fallback is contacted only when a
request needs it: never at startup, never in the background.

The next relay is tried only when the previous one failed before the final
dot and its failure says nothing about the recipient (the "fails over"
column of classify.RULES), or when its circuit is open. Never after the final
dot: an unknown outcome stays unknown. One time budget covers the whole
chain: while another relay could still take the mail, a relay gets at most
half of what is left, so a stalled one leaves time for the next; the last
gets all that remains. The last relay's answer is the answer, so it decides
whether the idempotency record is kept or released; when more than one relay
failed its message names each relay's failure.

The whole chain is one span, smtp.send (tracing.py), with a `failover`
event per relay left; each relay's attempts are its children (relay.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from .. import tracing
from ..addresses import mask_addresses
from ..config import Settings
from ..metrics import Metrics
from ..outcomes import Outcome, Result
from .breaker import OPEN
from .relay import Attempt, RelaySender, SendAborted

__all__ = ["Mail", "Mailer", "SendAborted"]

log = logging.getLogger("herald_smtp.mailer")

# A relay with others after it gets at most this share of the time left.
_SHARE_WHILE_OTHERS_REMAIN = 0.5


class Signer(Protocol):
    """Adds a signature to one relay's final bytes (sending/dkim_signer.py)."""

    def sign(self, payload: bytes, relay_index: int) -> bytes: ...


@dataclass(frozen=True)
class Mail:
    """One mail, ready for the wire (sending/message.py builds it)."""

    message_id: str  # without angle brackets
    payload: bytes  # headers and body with CRLF line ends, not yet dot-stuffed; the primary relay's From
    # The From header per relay (Settings.relays order) when a fallback writes another one; payload starts
    # with from_lines[0]. Empty: every relay sends `payload` as it is.
    from_lines: tuple[bytes, ...] = ()
    # DKIM (DKIM_PRIVATE_KEY_FILE): each relay's bytes are signed when that relay is tried. None: sent as written.
    signer: Signer | None = field(default=None, repr=False, compare=False)

    def payload_for(self, index: int) -> bytes:
        """What relay `index` sends: its From line, then, when signing, a DKIM-Signature for those bytes first."""
        if not self.from_lines or self.from_lines[index] == self.from_lines[0]:
            payload = self.payload
        else:
            payload = self.from_lines[index] + self.payload[len(self.from_lines[0]):]
        return payload if self.signer is None else self.signer.sign(payload, index)


class Mailer:
    def __init__(self, settings: Settings, metrics: Metrics, clock=time.monotonic):
        self.settings = settings
        self.metrics = metrics
        self.relays = tuple(RelaySender(relay, settings, metrics, clock=clock) for relay in settings.relays)

    @property
    def primary(self) -> RelaySender:
        return self.relays[0]

    def send(self, mail: Mail, recipient: str, budget: float, before_dot=None) -> Result:
        """Send within `budget` seconds, retries and failovers included.

        `before_dot()` runs just before the final dot; raising SendAborted there stops the send with
        nothing transmitted (the server discards a DATA that never ends).
        """
        with tracing.span("smtp.send"):
            result = self._send(mail, recipient, budget, before_dot)
            if tracing.active():
                tracing.set_attributes({"herald.outcome": result.outcome.value, "herald.smtp.relay": result.relay})
                if not result.ok:
                    tracing.fail(mask_addresses(result.message or result.outcome.value))
            return result

    def _send(self, mail: Mail, recipient: str, budget: float, before_dot) -> Result:
        deadline = time.monotonic() + budget
        failed: list[Result] = []
        for index, sender in enumerate(self.relays):
            following = self._usable_after(index)
            # A signed mail is signed for a relay only once its breaker lets it be tried (RelaySender.send).
            payload = mail.payload_for(index) if mail.signer is None else partial(mail.payload_for, index)
            attempt = sender.send(payload, mail.message_id, recipient,
                                  self._deadline_for(deadline, last=following is None), before_dot,
                                  last=following is None)
            if following is None or not attempt.fails_over:
                # Relays after this one were skipped as open: they belong in the answer too.
                skipped = [later.circuit_open() for later in self.relays[index + 1:]] if following is None else []
                return _answer(failed + [attempt.result] + skipped)
            failed.append(attempt.result)
            self._note_failover(attempt, sender, following)
        raise AssertionError("unreachable: the last usable relay always answers")

    def close(self) -> None:
        for sender in self.relays:
            sender.close()

    def _usable_after(self, index: int) -> RelaySender | None:
        """The next relay whose circuit is not open, if any."""
        return next((s for s in self.relays[index + 1:] if s.breaker.state != OPEN), None)

    @staticmethod
    def _deadline_for(deadline: float, last: bool) -> float:
        if last:
            return deadline
        now = time.monotonic()
        return now + max(0.0, deadline - now) * _SHARE_WHILE_OTHERS_REMAIN

    def _note_failover(self, attempt: Attempt, sender: RelaySender, following: RelaySender) -> None:
        result = attempt.result
        self.metrics.failovers.labels(sender.name, following.name).inc()
        tracing.add_event("failover", {"herald.smtp.relay": sender.name, "herald.smtp.next_relay": following.name})
        log.warning("send failover", extra={
            "relay": sender.name, "phase": result.phase or "circuit_open", "smtp_code": result.smtp_code,
            "outcome": result.outcome.value, "errmsg": mask_addresses(result.message), "next_relay": following.name})


def _answer(results: list[Result]) -> Result:
    """The answer of the last relay that tried; when other relays failed or were skipped, the message names
    each relay's failure."""
    last = next((r for r in reversed(results) if r.outcome is not Outcome.CIRCUIT_OPEN), results[-1])
    if len(results) == 1 or last.ok or last.outcome in (Outcome.RECIPIENT_REJECTED, Outcome.INVALID_DESTINATION):
        return last
    if all(r.outcome is Outcome.CIRCUIT_OPEN for r in results):
        return replace(last, message="every SMTP relay's circuit breaker is open after repeated connection "
                                     f"failures; failing fast ({', '.join(r.relay or '' for r in results)})",
                       retry_after=min(r.retry_after or 1 for r in results))
    return replace(last, message="every SMTP relay failed: " + "; ".join(_failure(r) for r in results))


def _failure(result: Result) -> str:
    if result.outcome is Outcome.CIRCUIT_OPEN:
        return f"{result.relay}: circuit open"
    where = ", ".join(str(part) for part in (result.phase, result.smtp_code) if part is not None)
    return f"{result.relay} ({where}): {result.message}"
