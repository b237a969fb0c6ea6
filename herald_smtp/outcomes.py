"""The one table from an outcome to error_code, HTTP status, retryability and
whether the idempotency record is kept or released.

Everything that can happen to a request is a `Result` carrying an outcome
name from OUTCOMES; nothing else decides status codes.

keep=True  : the record is stored for IDEMPOTENCY_TTL_SECONDS and replayed
             (success, permanent refusals, unknown outcomes: a retry must
             never send the mail twice).
keep=False : the key is released so a retry really retries (nothing was
             accepted by the server).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    error_code: str | None  # None for success
    http_status: int
    retryable: bool
    keep: bool


OUTCOMES: dict[str, Outcome] = {
    "sent": Outcome(None, 200, False, keep=True),
    # request problems: decided before any idempotency record exists
    "unauthorized": Outcome("unauthorized", 401, False, keep=False),
    "invalid_request": Outcome("invalid_request", 400, False, keep=False),
    "payload_too_large": Outcome("invalid_request", 413, False, keep=False),
    "invalid_destination": Outcome("invalid_destination", 400, False, keep=False),
    "not_found": Outcome("not_found", 404, False, keep=False),
    "method_not_allowed": Outcome("method_not_allowed", 405, False, keep=False),
    "idempotency_conflict": Outcome("idempotency_conflict", 409, False, keep=False),
    "idempotency_in_flight": Outcome("idempotency_conflict", 409, True, keep=False),
    "rate_limited": Outcome("rate_limited", 429, True, keep=False),
    # the service cannot try right now: nothing sent, retry later
    "smtp_not_configured": Outcome("provider_down", 503, True, keep=False),
    "store_unavailable": Outcome("provider_down", 503, True, keep=False),
    "circuit_open": Outcome("provider_down", 503, True, keep=False),
    # the SMTP transaction
    "recipient_rejected": Outcome("invalid_destination", 400, False, keep=True),
    "smtp_transient": Outcome("send_failed", 500, True, keep=False),
    # before MAIL FROM and not worth a retry (bad credentials, no STARTTLS, bad certificate):
    # nothing was sent, so the key is released for the retry after the fix.
    "smtp_setup": Outcome("send_failed", 500, False, keep=False),
    "smtp_permanent": Outcome("send_failed", 500, False, keep=True),
    "smtp_unknown": Outcome("send_failed", 500, False, keep=True),
    "internal_error": Outcome("internal_error", 500, True, keep=False),
}


# Retry-After on a 429/503 that has no better estimate (SMTP not configured, store down).
DEFAULT_RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True)
class Result:
    """What happened to one request; rendered to JSON by `body()`."""

    outcome: str
    message: str = ""
    message_id: str | None = None
    # Upstream cause for logs: SMTP reply code and the phase it came in.
    smtp_code: int | None = None
    phase: str | None = None
    retry_after: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def info(self) -> Outcome:
        return OUTCOMES[self.outcome]

    @property
    def ok(self) -> bool:
        return self.info.error_code is None

    @property
    def status(self) -> int:
        return self.info.http_status

    def body(self) -> dict:
        if self.ok:
            return {"ok": True, "message_id": self.message_id, "provider": "smtp"}
        return {
            "ok": False,
            "error_code": self.info.error_code,
            "error_message": self.message,
            "retryable": self.info.retryable,
        }


@dataclass(frozen=True)
class Answer:
    """What the caller receives: a fresh Result rendered, or a stored one replayed."""

    status: int
    body: dict
    replayed: bool = False
    retry_after: int | None = None


def answer_for(result: Result) -> Answer:
    retry_after = result.retry_after
    if retry_after is None and result.status in (429, 503):
        retry_after = DEFAULT_RETRY_AFTER_SECONDS
    return Answer(result.status, result.body(), retry_after=retry_after)
