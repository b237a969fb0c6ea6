"""The one table from an outcome to error_code, HTTP status, retryability and
whether the idempotency record is kept or released.

Everything that can happen to a request is a `Result` carrying an `Outcome`;
nothing else decides status codes.

keep=True  : the record is stored for IDEMPOTENCY_TTL_SECONDS and replayed
             (success, permanent refusals, unknown outcomes: a retry must
             never send the mail twice).
keep=False : the key is released so a retry really retries (nothing was
             accepted by the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(Enum):
    """Each member is one row: (error_code, HTTP status, retryable, keep). Its value is its log name."""

    error_code: str | None  # None for success
    http_status: int
    retryable: bool
    keep: bool

    def __new__(cls, name: str, error_code: str | None, http_status: int, retryable: bool, keep: bool):
        member = object.__new__(cls)
        member._value_ = name
        member.error_code = error_code
        member.http_status = http_status
        member.retryable = retryable
        member.keep = keep
        return member

    SENT = ("sent", None, 200, False, True)
    # request problems: decided before any idempotency record exists
    UNAUTHORIZED = ("unauthorized", "unauthorized", 401, False, False)
    INVALID_REQUEST = ("invalid_request", "invalid_request", 400, False, False)
    PAYLOAD_TOO_LARGE = ("payload_too_large", "invalid_request", 413, False, False)
    INVALID_DESTINATION = ("invalid_destination", "invalid_destination", 400, False, False)
    # The recipient is on the suppression list (sending/suppression.py): refused at once, no SMTP.
    SUPPRESSED = ("suppressed", "invalid_destination", 400, False, False)
    NOT_FOUND = ("not_found", "not_found", 404, False, False)
    METHOD_NOT_ALLOWED = ("method_not_allowed", "method_not_allowed", 405, False, False)
    IDEMPOTENCY_CONFLICT = ("idempotency_conflict", "idempotency_conflict", 409, False, False)
    IDEMPOTENCY_IN_FLIGHT = ("idempotency_in_flight", "idempotency_conflict", 409, True, False)
    # RATE_LIMIT_PER_RECIPIENT or RATE_LIMIT_GLOBAL used up (sending/abuse.py); Herald maps it.
    RATE_LIMITED = ("rate_limited", "rate_limited", 429, True, False)
    # the service cannot try right now: nothing sent, retry later
    SMTP_NOT_CONFIGURED = ("smtp_not_configured", "provider_down", 503, True, False)
    STORE_UNAVAILABLE = ("store_unavailable", "provider_down", 503, True, False)
    CIRCUIT_OPEN = ("circuit_open", "provider_down", 503, True, False)
    # the SMTP transaction
    RECIPIENT_REJECTED = ("recipient_rejected", "invalid_destination", 400, False, True)
    SMTP_TRANSIENT = ("smtp_transient", "send_failed", 500, True, False)
    # before MAIL FROM and not worth a retry (bad credentials, no STARTTLS, bad certificate):
    # nothing was sent, so the key is released for the retry after the fix.
    SMTP_SETUP = ("smtp_setup", "send_failed", 500, False, False)
    SMTP_PERMANENT = ("smtp_permanent", "send_failed", 500, False, True)
    SMTP_UNKNOWN = ("smtp_unknown", "send_failed", 500, False, True)
    INTERNAL_ERROR = ("internal_error", "internal_error", 500, True, False)

    @property
    def ok(self) -> bool:
        return self.error_code is None


# Retry-After on a 429/503 that has no better estimate (SMTP not configured, store down).
DEFAULT_RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True)
class Result:
    """What happened to one request; rendered to JSON by `body()`."""

    outcome: Outcome
    message: str = ""
    message_id: str | None = None
    # Upstream cause for logs: SMTP reply code and the phase it came in.
    smtp_code: int | None = None
    phase: str | None = None
    retry_after: int | None = None
    limit: str | None = None  # rate_limited: which limit refused it (RATE_LIMIT_PER_RECIPIENT or RATE_LIMIT_GLOBAL)
    relay: str | None = None  # host:port of the relay that gave this answer (None: decided before any relay)
    reply: str | None = None  # sent: the relay's reply text to the final dot
    relay_queue_id: str | None = None  # sent: the relay's queue id in that reply, when it names one

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def status(self) -> int:
        return self.outcome.http_status

    def body(self) -> dict:
        if self.ok:
            body: dict = {"ok": True, "message_id": self.message_id, "provider": "smtp"}
            if self.relay_queue_id:
                body["relay_queue_id"] = self.relay_queue_id
            return body
        return {
            "ok": False,
            "error_code": self.outcome.error_code,
            "error_message": self.message,
            "retryable": self.outcome.retryable,
        }


@dataclass(frozen=True)
class Answer:
    """What the caller receives: a fresh Result rendered, or a stored one replayed."""

    status: int
    body: dict
    replayed: bool = False
    retry_after: int | None = None

    @property
    def error_code(self) -> str:
        """For the requests metric: "" on success."""
        return self.body.get("error_code") or ""


def answer_for(result: Result) -> Answer:
    retry_after = result.retry_after
    if retry_after is None and result.status in (429, 503):
        retry_after = DEFAULT_RETRY_AFTER_SECONDS
    return Answer(result.status, result.body(), retry_after=retry_after)
