"""The classification table: (phase, evidence) of an SMTP failure -> outcome, failover, retry, breaker.

The vocabulary (phases, evidence) and the table itself are explained in
docs/DELIVERY.md, which shows markdown_table(); tests/test_delivery_docs.py
keeps the two identical. outcomes.py says what each outcome means for the
caller and for the idempotency record.
"""

from __future__ import annotations

import math
import re
import ssl
from dataclasses import dataclass
from typing import NamedTuple

from ..outcomes import Outcome, Result
from .deadline import NotSmtpReply, ReplyTooLong
from .provider_replies import lookup
from .queue_ids import queue_id_in
from .tokens import TokenError
from .transport import (AFTER_DATA, AUTH, CONNECT, DATA, MAIL, RCPT, TLS, BudgetSpentBeforeDot, SmtpFailure,
                        SmtpUtf8NotOffered)

PHASES = (CONNECT, TLS, AUTH, MAIL, RCPT, DATA, AFTER_DATA)
EVIDENCE = ("network", "local", "not_smtp", "too_long", "no_smtputf8", "late_commit", "oauth_refused",
            "oauth_unavailable", "2xx", "421", "4xx", "4xx_sender", "rate", "530", "5xx", "5xx_sender", "5xx_setup")
_SENDER_REFUSAL = re.compile(r"(?i)sender address rejected|relay access denied|relaying denied|"
                             r"relay not permitted|not allowed to relay|sender not allowed")
# A rate limit in a reply's text: Postfix's anvil limits ("too much mail from", "too many recipients from",
# "too many messages"), and the usual "rate limit(ed)", "rate exceeded", "throttled" of other relays.
_RATE_TEXT = re.compile(r"(?i)too much mail|too many (?:messages|mails|recipients|connections|sessions|requests)|"
                        r"\brate\b|ratelimit|rate-limit|throttl")
# RFC 3463 class 4, subject 7 (security or policy status): 4.7.x.
_POLICY_STATUS = re.compile(r"^4\.7\.\d{1,3}\b")
# Greylisting, or a refusal naming the recipient: about the recipient, not about our traffic.
_ABOUT_THE_RECIPIENT = re.compile(r"(?i)greylist|graylist|recipient address rejected")
# Retry-After for a rate refusal whose text names no time: Postfix counts its rate limits per
# anvil_rate_time_unit, 60 s by default, so by then the window that refused us has passed.
DEFAULT_RATE_RETRY_AFTER_SECONDS = 60
_MAX_RETRY_AFTER_SECONDS = 3600
_TIME_IN_TEXT = re.compile(r"(?i)\b(\d{1,6})\s*(s|secs?|seconds?|m|mins?|minutes?|h|hours?)\b")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}

_BEFORE_DATA_END = (CONNECT, TLS, AUTH, MAIL, RCPT, DATA)
_NOT_RCPT = (CONNECT, TLS, AUTH, MAIL, DATA)
FAILS_OVER, STAYS = True, False


class Rule(NamedTuple):
    """One row of the table; the other columns of docs/DELIVERY.md's table follow from these."""

    phases: tuple[str, ...]
    evidence: str
    outcome: Outcome
    fails_over: bool  # to the next relay
    example: str


# First match wins. A failover happens only before the final dot (nothing transmitted) and only on evidence
# about the relay, never about the recipient: RCPT is where the recipient is named, so only a 421, a rate or
# policy refusal of our traffic, or a refusal of the sender or relaying moves on from there.
RULES: tuple[Rule, ...] = tuple(Rule(*row) for row in (
    ((AFTER_DATA,), "2xx", Outcome.SENT, STAYS, "250 after the final dot: accepted, whatever fails afterwards"),
    ((AFTER_DATA,), "network", Outcome.SMTP_UNKNOWN, STAYS, "connection lost after the final dot, before the reply"),
    ((AFTER_DATA,), "421", Outcome.SMTP_TRANSIENT, STAYS, "421 after the final dot: not accepted; never retried in-request"),
    ((AFTER_DATA,), "4xx", Outcome.SMTP_TRANSIENT, STAYS, "451 after the final dot: not accepted; never retried in-request"),
    ((AFTER_DATA,), "5xx_setup", Outcome.SMTP_SETUP, STAYS, "554 Message rejected: Email address is not verified (Amazon SES), 550 The from address does not match a verified Sender Identity (SendGrid)"),
    ((AFTER_DATA,), "5xx", Outcome.SMTP_PERMANENT, STAYS, "554 5.7.1 rejected as spam"),
    ((AFTER_DATA,), "not_smtp", Outcome.SMTP_UNKNOWN, STAYS, "garbage instead of a reply to the final dot"),
    ((AFTER_DATA,), "too_long", Outcome.SMTP_UNKNOWN, STAYS, "250 and 9,000 characters after the final dot: unreadable, maybe accepted"),
    (_BEFORE_DATA_END, "network", Outcome.SMTP_TRANSIENT, FAILS_OVER, "connection refused, reset, timeout, DNS failure"),
    (_BEFORE_DATA_END, "421", Outcome.SMTP_TRANSIENT, FAILS_OVER, "421 4.7.0 too many connections, closing"),
    (_BEFORE_DATA_END, "too_long", Outcome.SMTP_TRANSIENT, FAILS_OVER, "a reply line longer than 8192 bytes: a broken relay, not its verdict"),
    (_NOT_RCPT, "4xx", Outcome.SMTP_TRANSIENT, FAILS_OVER, "451 try later, 452 out of storage, 454 TLS/AUTH unavailable"),
    ((RCPT,), "4xx_sender", Outcome.SMTP_TRANSIENT, FAILS_OVER, "450 4.7.1 Sender address rejected: try again later"),
    ((RCPT,), "4xx", Outcome.SMTP_TRANSIENT, STAYS, "450 4.2.0 mailbox busy, 451 4.7.1 greylisted, 452 4.2.2 mailbox full"),
    ((MAIL, RCPT), "rate", Outcome.SMTP_TRANSIENT, FAILS_OVER, "450 4.7.1 Error: too much mail from 192.0.2.1 (a Postfix rate limit), 421 4.7.0 too many messages, 450 4.7.1 Client host rejected"),
    ((CONNECT, TLS, AUTH), "5xx", Outcome.SMTP_SETUP, FAILS_OVER, "554 greeting, 535 bad credentials"),
    ((AUTH,), "oauth_refused", Outcome.SMTP_SETUP, FAILS_OVER, "the token endpoint refused the client or grant: invalid_client, unauthorized_client, invalid_grant, invalid_scope"),
    ((AUTH,), "oauth_unavailable", Outcome.SMTP_TRANSIENT, FAILS_OVER, "the token endpoint unreachable, timed out, or answering 5xx"),
    ((CONNECT, TLS, AUTH), "local", Outcome.SMTP_SETUP, FAILS_OVER, "STARTTLS not offered, certificate not trusted, AUTH not offered, SMTP_HOST not a host name"),
    (_BEFORE_DATA_END, "not_smtp", Outcome.SMTP_SETUP, FAILS_OVER, "an SSH or HTTP server on the SMTP port"),
    (_BEFORE_DATA_END, "530", Outcome.SMTP_SETUP, FAILS_OVER, "530 5.7.0 Authentication required, 530 Must issue a STARTTLS command first"),
    (_BEFORE_DATA_END, "5xx_setup", Outcome.SMTP_SETUP, FAILS_OVER, "550 5.7.30 Basic authentication is not supported for Client Submission (Microsoft 365), 554 Message rejected: Email address is not verified (Amazon SES, at MAIL FROM or RCPT TO)"),
    ((RCPT,), "5xx", Outcome.RECIPIENT_REJECTED, STAYS, "550 5.1.1 no such user"),
    ((RCPT,), "5xx_sender", Outcome.SMTP_PERMANENT, FAILS_OVER, "553 5.7.1 Sender address rejected; 554 5.7.1 Relay access denied"),
    ((MAIL, DATA), "5xx", Outcome.SMTP_PERMANENT, FAILS_OVER, "553 sender not allowed, 554 DATA refused"),
    ((DATA,), "late_commit", Outcome.SMTP_TRANSIENT, STAYS, "the idempotency commit used up the budget: the final dot was never sent"),
    ((MAIL,), "no_smtputf8", Outcome.INVALID_DESTINATION, STAYS, "to josé@example.com (a non-ASCII local part), no SMTPUTF8 in the server's EHLO: stopped before MAIL FROM"),
))


def evidence_of(failure: SmtpFailure) -> str:
    if failure.code is not None:
        if failure.code == 530:  # authentication or STARTTLS required: our setup, whatever the phase
            return "530"
        if is_provider_setup_refusal(failure.code, failure.reply):
            return "5xx_setup"
        if failure.phase in (MAIL, RCPT) and is_rate_refusal(failure.code, failure.reply):
            return "rate"
        if failure.code == 421:  # "closing the transmission channel": the relay, whatever the phase
            return "421"
        if failure.code >= 400 and failure.phase == RCPT and is_sender_refusal(failure.reply):
            return f"{failure.code // 100}xx_sender"
        return f"{failure.code // 100}xx"
    error = failure.error
    if isinstance(error, SmtpUtf8NotOffered):
        return "no_smtputf8"
    if isinstance(error, BudgetSpentBeforeDot):
        return "late_commit"
    if isinstance(error, TokenError):
        return "oauth_refused" if error.setup else "oauth_unavailable"
    if error is None or isinstance(error, ValueError):  # ValueError: e.g. an SMTP_HOST IDNA cannot encode
        return "local"
    if isinstance(error, NotSmtpReply):
        return "not_smtp"
    if isinstance(error, ReplyTooLong):
        return "too_long"
    if isinstance(error, ssl.SSLError) and not isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "local"
    return "network"


def is_provider_setup_refusal(code: int, reply: str) -> bool:
    """A 5xx whose text is a big provider's own wording for a setup problem (provider_replies.py): our
    credentials, an AUTH method turned off, a sender identity not verified. Never about the recipient,
    and a 5xx, even to the final dot, means the mail was refused: the operator fixes it, the key sends.
    """
    return code >= 500 and lookup(reply) is not None


def is_sender_refusal(reply: str) -> bool:
    return bool(_SENDER_REFUSAL.search(reply))


def is_rate_refusal(code: int, reply: str) -> bool:
    """A refusal of our traffic (rate limit or policy) at MAIL or RCPT, which no retry in the request can fix.

    A 421 whose text names a rate; a 4xx whose text names one; or a 4xx with a 4.7.x status (security
    or policy) that is not greylisting or a refusal of the recipient (about the recipient: "4xx") nor
    a refusal of the sender (a setup problem with its own rows: "4xx_sender" at RCPT, "4xx" at MAIL).
    """
    if code == 421 or not 400 <= code < 500:
        return code == 421 and bool(_RATE_TEXT.search(reply))
    if _RATE_TEXT.search(reply):
        return True
    return (bool(_POLICY_STATUS.match(reply)) and not _ABOUT_THE_RECIPIENT.search(reply)
            and not is_sender_refusal(reply))


def retry_after_in(reply: str) -> int | None:
    """The wait a reply's text names ("try again in 45 seconds", "retry in 5 minutes"), in whole seconds."""
    match = _TIME_IN_TEXT.search(reply)
    if match is None:
        return None
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]
    return min(_MAX_RETRY_AFTER_SECONDS, max(1, math.ceil(seconds)))


def _rule(phase: str, evidence: str) -> Rule | None:
    for rule in RULES:
        if phase in rule.phases and rule.evidence == evidence:
            return rule
    return None


def outcome_for(phase: str, evidence: str) -> Outcome:
    rule = _rule(phase, evidence)
    if rule is not None:
        return rule.outcome
    # Not expected (e.g. a 2xx where a refusal was raised); err on the side that never duplicates.
    return Outcome.SMTP_UNKNOWN if phase == AFTER_DATA else Outcome.SMTP_TRANSIENT


def fails_over(phase: str, evidence: str) -> bool:
    """May the next relay be tried? Never after the final dot, never on evidence about the recipient."""
    rule = _rule(phase, evidence)
    return phase != AFTER_DATA and rule is not None and rule.fails_over


def retried_in_request(phase: str, evidence: str, outcome: Outcome) -> bool:
    """Transient failures are retried only while nothing of the message was committed.

    Not a rate or policy refusal: the relay would refuse the retry too, and every refusal adds to
    its error count for the session (Postfix slows down, then hangs up, past its error limits). Not a
    late commit either: the budget is spent, and the key is already committed.
    """
    return outcome is Outcome.SMTP_TRANSIENT and phase != AFTER_DATA and evidence not in ("rate", "late_commit")


def counts_for_breaker(phase: str, evidence: str) -> bool:
    """Connection-level failures: the server cannot be reached, will not talk to us, or stalls.

    A dead pooled connection never gets here (it is replaced first); after the
    final dot nothing counts, the outcome is only unknown.
    """
    if evidence in ("network", "too_long"):
        return phase != AFTER_DATA
    return phase in (CONNECT, TLS) and evidence in ("421", "4xx", "not_smtp")


@dataclass(frozen=True)
class Verdict:
    result: Result
    retry: bool
    connection_failure: bool
    fails_over: bool = False


def classify_failure(failure: SmtpFailure) -> Verdict:
    evidence = evidence_of(failure)
    outcome = outcome_for(failure.phase, evidence)
    rate = evidence == "rate"
    message = (_with_fix(f"SMTP {failure.phase} refused: {failure.code} {failure.reply}", failure.reply)
               if evidence == "5xx_setup" else _message(failure, outcome, rate))
    return Verdict(
        Result(outcome, message, smtp_code=failure.code, phase=failure.phase,
               retry_after=(retry_after_in(failure.reply) or DEFAULT_RATE_RETRY_AFTER_SECONDS) if rate else None),
        retry=retried_in_request(failure.phase, evidence, outcome),
        connection_failure=counts_for_breaker(failure.phase, evidence),
        fails_over=fails_over(failure.phase, evidence),
    )


def spoils_session(failure: SmtpFailure) -> bool:
    """Close the session rather than RSET and pool it: it got a rate or policy refusal.

    Such a refusal repeats on that session, and each one adds to the server's error count for it,
    which RSET does not clear (Postfix delays every reply past smtpd_soft_error_limit and hangs up
    at smtpd_hard_error_limit); a new session starts from zero.
    """
    return evidence_of(failure) == "rate"


def classify_reply(code: int, reply: str, message_id: str) -> Result:
    """The server's answer to the end of DATA."""
    setup = is_provider_setup_refusal(code, reply)
    outcome = outcome_for(AFTER_DATA, "5xx_setup" if setup else f"{code // 100}xx")
    if outcome is Outcome.SENT:
        return Result(outcome, message_id=message_id, smtp_code=code, phase=AFTER_DATA, reply=reply,
                      relay_queue_id=queue_id_in(reply))
    return Result(outcome, _with_fix(f"SMTP server refused the message: {code} {reply}", reply), smtp_code=code,
                  phase=AFTER_DATA)


def _with_fix(message: str, reply: str) -> str:
    """The message, then what a provider's reply means and its fix: the fix `herald-smtp doctor` names too.

    A 5xx_setup message is built from the reply, not the failure's detail: AUTH's detail ends with a generic
    "check SMTP_USER and SMTP_PASSWORD", which the provider's own fix replaces (wrong for Microsoft's 5.7.30).
    """
    row = lookup(reply)
    return f"{message}; {row.problem} (fix: {row.fix})" if row else message


def _message(failure: SmtpFailure, outcome: Outcome, rate: bool = False) -> str:
    if outcome is Outcome.SMTP_UNKNOWN:
        happened = ("the server's reply to the whole message could not be read" if isinstance(failure.error, ReplyTooLong)
                    else "the connection failed after the whole message was sent and before the server replied")
        return f"outcome unknown: {happened} ({failure.detail}); not retried, to avoid a duplicate mail"
    if outcome is Outcome.RECIPIENT_REJECTED:
        return f"recipient rejected: {failure.detail}"
    if outcome is Outcome.INVALID_DESTINATION:  # no SMTPUTF8: the detail names it
        return failure.detail
    if failure.phase == RCPT and outcome is Outcome.SMTP_PERMANENT:
        return f"sender or relaying refused at RCPT (check SMTP_FROM and AUTH): {failure.detail}"
    if rate:
        return f"SMTP {failure.phase} refused by the relay's rate limit or policy, not retried: {failure.detail}"
    return f"SMTP {failure.phase} failed: {failure.detail}"


def markdown_table() -> str:
    """The table as docs/DELIVERY.md shows it."""
    lines = [
        "| phase | evidence | outcome | error_code | HTTP | retryable | record | fails over | retried in-request "
        "| opens breaker | example |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rule in RULES:
        outcome = rule.outcome
        retried = {retried_in_request(p, rule.evidence, outcome) for p in rule.phases}
        breaker = {counts_for_breaker(p, rule.evidence) for p in rule.phases}
        lines.append(
            f"| {', '.join(rule.phases)} | {rule.evidence} | {outcome.value} | {outcome.error_code or '(ok)'} "
            f"| {outcome.http_status} | {_yes(outcome.retryable)} | {'kept' if outcome.keep else 'released'} "
            f"| {_yes(rule.fails_over)} | {_yes_set(retried)} "
            f"| {_yes_set(breaker)} | {rule.example} |"
        )
    return "\n".join(lines) + "\n"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _yes_set(flags: set[bool]) -> str:
    return _yes(flags.pop()) if len(flags) == 1 else "some phases"
