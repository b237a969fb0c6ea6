"""The mailer: sends one EmailMessage over SMTP and returns a Result.

`Mailer.send` is the only entry point the service uses. Today it opens one
connection per mail; connection reuse, retries and the circuit breaker wrap
`_attempt` without changing the interface.
"""

from __future__ import annotations

import email.policy
import ssl
import time
from email.message import EmailMessage

from ..config import Settings
from ..outcomes import Result
from . import transport
from .transport import AFTER_DATA, AUTH, CONNECT, RCPT, TLS, SmtpFailure

# Failures before MAIL FROM that no retry will fix: the setup is wrong.
_SETUP_PHASES = (CONNECT, TLS, AUTH)


class Mailer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.tls_context = transport.tls_context(settings) if _uses_tls(settings) else None

    def send(self, msg: EmailMessage, recipient: str, timeout: float | None = None) -> Result:
        budget = min(self.settings.smtp_timeout_seconds, timeout or self.settings.smtp_timeout_seconds)
        message_id = msg["Message-ID"].strip("<>")
        try:
            code, reply = self._attempt(msg, recipient, time.monotonic() + budget)
        except SmtpFailure as failure:
            return classify_failure(failure)
        return classify_reply(code, reply, message_id)

    def _attempt(self, msg: EmailMessage, recipient: str, deadline: float) -> tuple[int, str]:
        payload = msg.as_bytes(policy=email.policy.SMTP)
        conn = transport.open_connection(self.settings, self.tls_context, deadline)
        try:
            code, reply = transport.transmit(conn, self.settings.smtp_from, recipient, payload, deadline)
        except SmtpFailure as failure:
            if failure.phase != AFTER_DATA:
                transport.reset(conn)
            raise
        finally:
            transport.close_quietly(conn)
        return code, reply


def _uses_tls(settings: Settings) -> bool:
    return settings.smtp_use_tls or settings.smtp_use_starttls


def classify_reply(code: int, reply: str, message_id: str) -> Result:
    """The server's answer to the end of DATA."""
    if 200 <= code < 300:
        return Result("sent", message_id=message_id, smtp_code=code, phase=AFTER_DATA)
    outcome = "smtp_transient" if 400 <= code < 500 else "smtp_permanent"
    return Result(outcome, f"SMTP server refused the message: {code} {reply}", smtp_code=code, phase=AFTER_DATA)


def classify_failure(failure: SmtpFailure) -> Result:
    code, phase = failure.code, failure.phase
    if phase == AFTER_DATA:
        return Result(
            "smtp_unknown",
            "outcome unknown: the connection failed after the whole message was sent and before the "
            f"server replied ({failure.detail}); not retried, to avoid a duplicate mail",
            smtp_code=code, phase=phase,
        )
    message = f"SMTP {phase} failed: {failure.detail}"
    if code is not None and code >= 500:
        if phase == RCPT:
            return Result("recipient_rejected", f"recipient rejected: {failure.detail}", smtp_code=code, phase=phase)
        # 5xx before MAIL (e.g. 535 bad credentials) is a setup problem: nothing was sent, release the key.
        outcome = "smtp_setup" if phase in _SETUP_PHASES else "smtp_permanent"
        return Result(outcome, message, smtp_code=code, phase=phase)
    if phase in (TLS, AUTH) and (failure.error is None or isinstance(failure.error, ssl.SSLError)):
        # STARTTLS not offered, certificate rejected, AUTH not offered: fix the setup, not retry.
        return Result("smtp_setup", message, smtp_code=code, phase=phase)
    return Result("smtp_transient", message, smtp_code=code, phase=phase)
