"""One SMTP connection and one mail transaction over it, as steps.

    open_connection = connect (TCP, implicit TLS, greeting) -> ehlo -> [starttls] -> [login]
    transmit        = mail_from -> rcpt_to -> start_data -> content (the message, the final dot, the reply)

When the server offers PIPELINING (RFC 2920), transmit sends MAIL, RCPT and
DATA in one write and reads their three replies (envelope_pipelined): two
round trips a mail instead of four. Each reply is still checked against its
own phase, so a refusal names MAIL, RCPT or DATA as the sequential exchange
would, and the content is sent only after a 354 that followed two
acceptances.

When the server offers CHUNKING (RFC 3030) as well, one round trip is
enough (transmit_chunked): the idempotency commit (`before_dot`) runs FIRST,
then MAIL, RCPT and `BDAT <size> LAST` go in one write with the message as it
is (no dot-stuffing: BDAT counts octets), and the three replies are read. The
reply to BDAT ... LAST is the server's verdict on the message, as the reply
to the final dot is. A refusal of MAIL or RCPT (the BDAT is refused with it)
means nothing was accepted: it is raised for its phase as in the pipelined
exchange, and the key is released or kept as for that refusal. From the
write on, a lost connection is an unknown outcome, so the group only goes
into a connection known to be alive: a non-blocking look at the socket just
before the commit must find neither a pending reply (a 421) nor an EOF, else
the connection is closed and the failure raised at MAIL, where the relay
replaces a dead pooled connection at once, before anything was committed.

A mail to a non-ASCII address (a UTF-8 local part) goes with SMTPUTF8 (RFC
6531): mail_from checks the EHLO for it first and, when the server does not
offer it, stops before MAIL FROM (SmtpUtf8NotOffered: nothing was sent, the
session stays usable), else sends MAIL FROM with the SMTPUTF8 parameter.

AUTH uses one mechanism, the first of AUTH_MECHANISMS the server offers, and
tries it once: a refusal is the answer (see login). When no mechanism can be
used, auth_problem says why and what to change, for the send's error and the
doctor alike. A request hangs up with close_without_waiting: the QUIT reply is
never waited for, and inside DATA no QUIT is sent at all.

Each step is public: the mailer runs them through open_connection and
transmit, `herald-smtp doctor` runs them one by one. Any failure is raised as
SmtpFailure carrying the phase it happened in and its evidence (reply code and
text, or the exception), which is what classification needs: the same error
means "retry" before the end of DATA and "unknown" after it. Every step takes
a `deadline` (time.monotonic) that bounds every wait in it, reads included
(see deadline.py). Pooling, retries and the breaker wrap it (see mailer,
pool, breaker).

While tracing is on, each phase is a span (tracing.py) carrying the
attributes the relay passes (relay, attempt, connection reused) and the reply
code: smtp.connect (TCP, greeting, EHLO; for implicit TLS the smtp.tls
handshake is its child), smtp.tls (STARTTLS and the second EHLO), smtp.auth,
smtp.mail, smtp.rcpt, smtp.data (the DATA command and its 354), smtp.dot (the
message, the commit point, the final dot and its reply). Pipelined, the three
envelope spans stay: smtp.mail holds the one write and MAIL's reply, smtp.rcpt
and smtp.data their replies (herald.smtp.pipelined: true); with CHUNKING
smtp.dot holds the reply to BDAT ... LAST instead of smtp.data (the commit's
own span comes before smtp.mail). A refusal marks its
phase's span ERROR with the detail masked (addresses.mask_addresses).
"""

from __future__ import annotations

import functools
import re
import select
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass

from .. import tracing
from ..addresses import mask_addresses
from ..config import IMPLICIT_TLS, PLAIN, STARTTLS, Relay
from ..config.oauth import AuthMechanism
from . import deadline as bounded
from .deadline import DeadlineSMTP, NotSmtpReply, set_timeout
from .tokens import AccessToken, TokenError, TokenSource

# The AUTH mechanisms we use, in order of preference (smtplib implements each). One is tried per
# connection: a refusal is the answer, never a second try of the same password with another mechanism.
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
# With OAuth: XOAUTH2 (Microsoft 365, Google) first, else OAUTHBEARER (RFC 7628).
OAUTH_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
_ERRORS = (OSError, smtplib.SMTPException)  # what smtplib and sockets raise; _failure maps them

# Transaction phases, in order. AFTER_DATA starts once the final dot is sent:
# from then on the server may have accepted the mail.
CONNECT, TLS, AUTH, MAIL, RCPT, DATA, AFTER_DATA = (
    "connect", "tls", "auth", "mail", "rcpt", "data", "after_data"
)


@dataclass
class SmtpFailure(Exception):
    phase: str
    detail: str  # human-readable cause, never a credential
    code: int | None = None  # SMTP reply code when the server answered
    error: BaseException | None = None  # the underlying exception; None when we stopped (e.g. STARTTLS not offered)
    reply: str = ""  # the server's reply text, when it answered

    def __str__(self) -> str:
        return f"{self.phase}: {self.detail}"


class BudgetSpentBeforeDot(Exception):
    """The budget ran out between the message and its final dot (a slow commit): the dot was never sent."""


class SmtpUtf8NotOffered(Exception):
    """The mail needs SMTPUTF8 and the server's EHLO does not offer it: stopped before MAIL FROM, nothing sent."""


SMTPUTF8_NOT_OFFERED = ("the recipient's address has a non-ASCII part before the @, which needs SMTPUTF8 (RFC 6531), "
                        "and the SMTP server does not offer SMTPUTF8; nothing was sent")


def needs_smtputf8(*addresses: str) -> bool:
    """True when an envelope address is not ASCII (a UTF-8 local part: IDNA domains are ASCII already)."""
    return not all(address.isascii() for address in addresses)


@functools.lru_cache(maxsize=1)
def local_hostname() -> str:
    """The EHLO name. smtplib would look it up (DNS) on every connection; once per process is enough."""
    return socket.getfqdn()


def tls_context(relay: Relay) -> ssl.SSLContext | None:
    """The client TLS context for the relay's implicit TLS or STARTTLS; None when TLS is off."""
    if relay.tls == PLAIN:
        return None
    context = ssl.create_default_context()
    if relay.ca_file:
        context.load_verify_locations(cafile=relay.ca_file)
    if not relay.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def open_connection(relay: Relay, context: ssl.SSLContext | None, deadline: float,
                    span_attributes: dict | None = None, tokens: TokenSource | None = None) -> DeadlineSMTP:
    """Connect, secure and authenticate; the caller owns (and closes) the result.

    `deadline` (time.monotonic) bounds the whole exchange, not each read. `span_attributes`
    go on each phase's span (tracing on only). `tokens`: the relay's OAuth tokens, when it has OAuth.
    """
    with _phase(CONNECT, span_attributes):
        conn = connect(relay, context, deadline, span_attributes)
        try:
            ehlo(conn, deadline)
        except BaseException:
            close_without_waiting(conn)
            raise
    try:
        if relay.tls == STARTTLS:
            with _phase(TLS, span_attributes):
                starttls(conn, relay, context, deadline)
        if relay.user:
            with _phase(AUTH, span_attributes):
                login(conn, relay, deadline, tokens)
    except BaseException:
        close_without_waiting(conn)
        raise
    return conn


def transmit(conn: DeadlineSMTP, sender: str, recipient: str, payload: bytes, deadline: float,
             before_dot=None, span_attributes: dict | None = None, envid: str | None = None) -> tuple[int, str]:
    """MAIL, RCPT, DATA, pipelined when the server offers it. Returns the server's final reply,
    which may be a refusal.

    With a non-ASCII address the MAIL FROM asks for SMTPUTF8 (and `payload` may hold UTF-8 headers).
    With `envid` (the message_id) and a server that offers DSN, delivery status notifications are asked
    for (see dsn_parameters).
    """
    smtputf8 = needs_smtputf8(sender, recipient)
    mail_parameters, rcpt_parameters = dsn_parameters(conn, recipient, envid)
    if conn.has_extn("pipelining") and conn.has_extn("chunking"):
        return transmit_chunked(conn, sender, recipient, payload, deadline, before_dot, span_attributes, smtputf8,
                                mail_parameters, rcpt_parameters)
    if conn.has_extn("pipelining"):
        envelope_pipelined(conn, sender, recipient, deadline, smtputf8, span_attributes, mail_parameters,
                           rcpt_parameters)
    else:
        with _phase(MAIL, span_attributes):
            mail_from(conn, sender, deadline, smtputf8, mail_parameters)
        with _phase(RCPT, span_attributes):
            rcpt_to(conn, recipient, deadline, rcpt_parameters)
        with _phase(DATA, span_attributes):
            start_data(conn, deadline)
    with _phase(AFTER_DATA, span_attributes):
        code, reply = content(conn, payload, deadline, before_dot)
        _note_reply(code)
        if code != 250 and tracing.active():
            tracing.fail(f"{code} to the final dot")
        return code, reply


# The span of each phase (see the module docstring); AFTER_DATA's covers the final dot and its reply.
_SPAN_NAMES = {CONNECT: "smtp.connect", TLS: "smtp.tls", AUTH: "smtp.auth", MAIL: "smtp.mail", RCPT: "smtp.rcpt",
               DATA: "smtp.data", AFTER_DATA: "smtp.dot"}


def _phase(phase: str, attributes: dict | None, pipelined: bool = False):
    """The phase's span while tracing is on; the shared no-op otherwise."""
    if not tracing.active():
        return tracing.NOOP
    return _PhaseSpan(phase, attributes, pipelined)


class _PhaseSpan:
    """A phase's span; an SmtpFailure of this phase leaves its reply code and masked detail on it."""

    def __init__(self, phase: str, attributes: dict | None, pipelined: bool):
        self.phase = phase
        attributes = dict(attributes or {}, **{"herald.smtp.phase": phase})
        if pipelined:
            attributes["herald.smtp.pipelined"] = True
        self.span = tracing.span(_SPAN_NAMES[phase], attributes)

    def __enter__(self):
        return self.span.__enter__()

    def __exit__(self, kind, exc, traceback):
        if isinstance(exc, SmtpFailure):
            _note_failure(exc)
        return self.span.__exit__(kind, exc, traceback)


def _note_reply(code: int | None) -> None:
    if code is not None and tracing.active():
        tracing.set_attributes({"herald.smtp.reply_code": code})


def _note_failure(failure: SmtpFailure) -> None:
    """On the current span: the refusal's code and its detail, addresses masked (a reply may echo one)."""
    if not tracing.active():
        return
    _note_reply(failure.code)
    tracing.set_attributes({"herald.smtp.failed_phase": failure.phase})
    tracing.fail(mask_addresses(str(failure)))


def connect(relay: Relay, context: ssl.SSLContext | None, deadline: float,
            span_attributes: dict | None = None) -> DeadlineSMTP:
    """DNS, TCP, the TLS handshake for implicit TLS, and the server's greeting, all within `deadline`."""
    conn = DeadlineSMTP(local_hostname=local_hostname())  # unconnected: we open the socket ourselves
    conn._host = relay.host  # smtplib's starttls() checks the certificate against this name (see DeadlineSMTP)
    conn.deadline = deadline
    conn.sock = _open_socket(relay, context, deadline, span_attributes)
    try:
        code, reply = conn.getreply()
    except _ERRORS as exc:
        conn.close()
        raise _failure(CONNECT, exc, f"connect to {relay.name} failed") from None
    _note_reply(code)
    if code != 220:
        close_without_waiting(conn)
        text = _text(reply)
        raise SmtpFailure(CONNECT, f"{relay.name} refused the session: {code} {text}", code, reply=text)
    return conn


def _open_socket(relay: Relay, context: ssl.SSLContext | None, deadline: float,
                 span_attributes: dict | None = None) -> socket.socket:
    host, where = relay.host, relay.name
    try:
        addresses = bounded.resolve(host, relay.port, deadline)
    except socket.gaierror as exc:
        raise SmtpFailure(CONNECT, f"cannot resolve {host}: {exc.strerror}", error=exc) from None
    except UnicodeError as exc:
        raise SmtpFailure(CONNECT, f"SMTP_HOST {host!r} is not a valid host name ({exc})", error=exc) from None
    except TimeoutError as exc:
        raise SmtpFailure(CONNECT, f"cannot resolve {host}: timed out", error=exc) from None
    try:
        sock = bounded.connect_tcp(addresses, deadline)
    except OSError as exc:
        raise SmtpFailure(CONNECT, f"connect to {where} failed: {describe_error(exc)}", error=exc) from None
    if relay.tls != IMPLICIT_TLS:
        return sock
    if context is None:  # a caller's mistake, not the server's: tls_context(relay) is None only for plain SMTP
        sock.close()
        raise ValueError(f"{where} uses implicit TLS: a TLS context is needed (transport.tls_context)")
    with _phase(TLS, span_attributes):
        try:
            return bounded.wrap_tls(sock, context, host, deadline)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise SmtpFailure(TLS, f"TLS handshake with {where} failed: {describe_error(exc)}", error=exc) from None


def ehlo(conn: DeadlineSMTP, deadline: float) -> None:
    code, reply = _command(conn, CONNECT, conn.ehlo, deadline)
    _note_reply(code)
    if code != 250:
        raise SmtpFailure(CONNECT, f"EHLO refused: {code} {reply}", code, reply=reply)


def starttls(conn: DeadlineSMTP, relay: Relay, context: ssl.SSLContext | None, deadline: float) -> None:
    """STARTTLS, required: a server that does not offer it fails here, never a silent downgrade.
    (`context` None is smtplib's default context, which verifies; the callers pass tls_context(relay).)"""
    if not conn.has_extn("starttls"):
        raise SmtpFailure(
            TLS,
            f"{relay.name} does not offer STARTTLS, which this relay requires (SMTP_USE_STARTTLS=true, or an "
            "smtp:// fallback URL); refusing to send without TLS (use SMTP_USE_TLS=true or smtps:// for an "
            "implicit-TLS port such as 465)",
        )
    try:
        _arm(conn, TLS, deadline)
        code, _ = conn.starttls(context=context)
    except _ERRORS as exc:
        failed = "STARTTLS handshake failed" if isinstance(exc, ssl.SSLError) else "STARTTLS failed"
        raise _failure(TLS, exc, failed, refused="STARTTLS refused: ") from None
    _note_reply(code)
    ehlo(conn, deadline)


def login(conn: DeadlineSMTP, relay: Relay, deadline: float, tokens: TokenSource | None = None) -> None:
    """AUTH with one mechanism. A password is tried once: smtplib's login() would retry a refused one with
    the next mechanism, two failed logins a send and twice as fast to the account's lockout. A bearer
    token the server refuses is fetched anew and tried once more (it may have been revoked or expired
    early); a second refusal is the answer."""
    mechanism = auth_mechanism(conn, relay)
    if mechanism is None:
        raise SmtpFailure(AUTH, "; ".join(auth_problem(conn, relay)))  # we stopped: evidence "local", a setup error
    if relay.oauth is None:
        conn.user, conn.password = relay.user, relay.password  # smtplib's auth_plain() and the others read them
        _authenticate(conn, mechanism, getattr(conn, "auth_" + mechanism.lower().replace("-", "_")), deadline,
                      " (check SMTP_USER and SMTP_PASSWORD, or the fallback URL's user and password)")
        return
    if tokens is None:
        raise ValueError(f"{relay.name} logs in with OAuth but was given no token source")
    token = _token(tokens, deadline)
    try:
        _authenticate(conn, mechanism, _bearer(mechanism, relay.user, token.value), deadline)
        return
    except SmtpFailure as refused:
        if refused.code is None or refused.code < 500:
            raise
    token = _token(tokens, deadline, refused=token)
    _authenticate(conn, mechanism, _bearer(mechanism, relay.user, token.value), deadline,
                  " (a fresh OAuth token was refused too: check that the mailbox SMTP_USER allows SMTP AUTH and "
                  "that the application may send as it)")


def _token(tokens: TokenSource, deadline: float, refused: AccessToken | None = None) -> AccessToken:
    try:
        return tokens.get(deadline, refused)
    except TokenError as error:
        raise SmtpFailure(AUTH, f"no OAuth token: {error.detail}", error=error) from None


def _bearer(mechanism: str, user: str, token: str):
    """The authobject smtplib.auth() calls: the initial response, then "" to a 334 challenge (which carries the
    server's JSON error, before its 535)."""
    if mechanism == "XOAUTH2":
        initial = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:  # OAUTHBEARER, RFC 7628
        initial = f"n,a={user},\x01auth=Bearer {token}\x01\x01"

    def respond(challenge: bytes | None = None) -> str:
        return initial if challenge is None else ""

    return respond


def _authenticate(conn: DeadlineSMTP, mechanism: str, authobject, deadline: float, hint: str = "") -> None:
    try:
        _arm(conn, AUTH, deadline)
        code, _ = conn.auth(mechanism, authobject)
    except _ERRORS as exc:
        failure = _failure(AUTH, exc, "authentication failed", refused="authentication failed: ")
        if isinstance(exc, smtplib.SMTPAuthenticationError) and exc.smtp_code >= 500:
            failure.detail += hint
        raise failure from None
    _note_reply(code)


def auth_problem(conn: DeadlineSMTP, relay: Relay) -> tuple[str, str]:
    """(why this session cannot log in as the relay's user, the fix), when the EHLO offers none of the
    mechanisms the relay may use (no AUTH, or only others): login stops there. Both the send's error and
    `herald-smtp doctor` say it.
    """
    wanted = ", ".join(wanted_mechanisms(relay))
    if conn.has_extn("auth"):
        offered = " ".join(conn.esmtp_features["auth"].split())
        if relay.mechanism != AuthMechanism.AUTO:
            return (f"the server offers AUTH {offered}, not {wanted} (SMTP_AUTH_MECHANISM={relay.mechanism})",
                    "set SMTP_AUTH_MECHANISM=auto, or one the server offers")
        if relay.oauth is not None:
            return (f"the server offers AUTH {offered}; OAuth needs XOAUTH2 or OAUTHBEARER",
                    "use the provider's OAuth-capable submission host (smtp.office365.com, smtp.gmail.com), or a "
                    "password instead of the SMTP_OAUTH_* variables")
        return (f"the server offers AUTH {offered}; herald-smtp supports {wanted}",
                "ask the provider for password login (a submission port, usually 587), or leave SMTP_USER empty "
                "if this server relays without login")
    if relay.tls == PLAIN and conn.has_extn("starttls"):  # e.g. Postfix's smtpd_tls_auth_only
        return "the server offers AUTH only after STARTTLS", "set SMTP_USE_STARTTLS=true"
    fix = "leave SMTP_USER empty if this server relays without login"
    if relay.tls == PLAIN:
        fix += ("; if it offers AUTH only over TLS, use its TLS port (587 with SMTP_USE_STARTTLS=true, or 465 "
                "with SMTP_USE_TLS=true)")
    return "the server does not offer AUTH, but a user is set (SMTP_USER, or the fallback URL's)", fix


def wanted_mechanisms(relay: Relay) -> tuple[str, ...]:
    """The AUTH mechanisms this relay may use, in order of preference."""
    if relay.mechanism != AuthMechanism.AUTO:
        return (relay.mechanism.upper(),)
    return OAUTH_MECHANISMS if relay.oauth is not None else AUTH_MECHANISMS


def auth_mechanism(conn: DeadlineSMTP, relay: Relay) -> str | None:
    """The mechanism this session logs in with: the first wanted one the server offers."""
    offered = conn.esmtp_features.get("auth", "").upper().split()
    return next((mechanism for mechanism in wanted_mechanisms(relay) if mechanism in offered), None)


def mail_from(conn: DeadlineSMTP, sender: str, deadline: float, smtputf8: bool = False,
              parameters: tuple[str, ...] = ()) -> None:
    """MAIL FROM, with the SMTPUTF8 parameter when `smtputf8`; refused before any command if the server lacks it."""
    _check_smtputf8(conn, smtputf8)
    options = (["SMTPUTF8"] if smtputf8 else []) + list(parameters)
    code, reply = _command(conn, MAIL, lambda: conn.mail(sender, options), deadline)
    _check_reply(MAIL, sender, code, reply)


def rcpt_to(conn: DeadlineSMTP, recipient: str, deadline: float, parameters: tuple[str, ...] = ()) -> None:
    code, reply = _command(conn, RCPT, lambda: conn.rcpt(recipient, list(parameters)), deadline)
    _check_reply(RCPT, recipient, code, reply)


def dsn_parameters(conn: DeadlineSMTP, recipient: str, envid: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(MAIL FROM's, RCPT TO's) DSN parameters (RFC 3461) when the server offers DSN: the notifications come
    back with the headers only (RET=HDRS) and our message_id (ENVID), for a failure or a delay, never for a
    delivery, naming the recipient as we sent it (ORCPT; left out for a non-ASCII one, which would need
    RFC 6533's utf-8 form). Nothing without DSN or without an `envid`."""
    if envid is None or not conn.has_extn("dsn"):
        return (), ()
    rcpt = ("NOTIFY=FAILURE,DELAY",) + ((f"ORCPT=rfc822;{xtext(recipient)}",) if recipient.isascii() else ())
    return ("RET=HDRS", f"ENVID={xtext(envid)}"), rcpt


def xtext(value: str) -> str:
    """RFC 3461's xtext: printable ASCII but "+" and "=" as it is, everything else as +HH."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
                   for c in value)


def start_data(conn: DeadlineSMTP, deadline: float) -> None:
    code, reply = _command(conn, DATA, lambda: conn.docmd("DATA"), deadline)
    _check_reply(DATA, "", code, reply)


def envelope_pipelined(conn: DeadlineSMTP, sender: str, recipient: str, deadline: float,
                       smtputf8: bool = False, span_attributes: dict | None = None,
                       mail_parameters: tuple[str, ...] = (), rcpt_parameters: tuple[str, ...] = ()) -> None:
    """MAIL, RCPT and DATA in one write, then their three replies, each checked against its own phase.

    Every reply is read, so the session stays in step: after a refused MAIL or RCPT the server
    refuses the DATA too, and the connection is fit for RSET and reuse. The first refusal is raised.
    A session that cannot be kept in step (a lost connection, a 421, or a 354 after a refusal, i.e.
    a server waiting for content that must never be sent) is closed before raising.
    """
    _check_smtputf8(conn, smtputf8)
    encoded = _envelope_group(sender, recipient, "DATA", smtputf8, mail_parameters, rcpt_parameters)
    refusal: SmtpFailure | None = None
    for phase, address in ((MAIL, sender), (RCPT, recipient), (DATA, "")):
        with _phase(phase, span_attributes, pipelined=True):
            if phase == MAIL:
                _command(conn, MAIL, lambda: conn.send(encoded), deadline)
            try:
                code, reply = _command(conn, phase, conn.getreply, deadline)
                if refusal is None:
                    _check_reply(phase, address, code, reply)
                else:
                    _note_reply(code)
            except SmtpFailure as failure:
                _note_failure(failure)
                refusal = refusal or failure
                if failure.code in (None, 421):
                    conn.close()
                    raise refusal from None
    if refusal is not None:
        if code == 354:
            conn.close()
        raise refusal


def _envelope_group(sender: str, recipient: str, last: str, smtputf8: bool, mail_parameters: tuple[str, ...],
                    rcpt_parameters: tuple[str, ...]) -> bytes:
    """MAIL FROM, RCPT TO and `last` (DATA, or BDAT), one line each, encoded for the wire."""
    mail = "".join(f" {p}" for p in (("SMTPUTF8",) if smtputf8 else ()) + mail_parameters)
    rcpt = "".join(f" {p}" for p in rcpt_parameters)
    # Plain addr-specs, validated by addresses.py: smtplib.quoteaddr's full RFC 2822 parse would cost more
    # than the rest of the group.
    group = f"MAIL FROM:<{sender}>{mail}\r\nRCPT TO:<{recipient}>{rcpt}\r\n{last}\r\n"
    if group.count("\n") != 3:  # addresses are validated long before; a line break here would inject commands
        raise ValueError("line break in an envelope address")
    return group.encode("utf-8" if smtputf8 else "ascii")


def transmit_chunked(conn: DeadlineSMTP, sender: str, recipient: str, payload: bytes, deadline: float,
                     before_dot=None, span_attributes: dict | None = None, smtputf8: bool = False,
                     mail_parameters: tuple[str, ...] = (), rcpt_parameters: tuple[str, ...] = ()) -> tuple[int, str]:
    """The commit, then MAIL, RCPT and `BDAT <size> LAST` with the message in one write; the BDAT's reply.

    Only into a connection the look at its socket finds alive (check_alive): a dead one fails at MAIL
    before the commit. The commit point comes first because the server may accept the mail as soon as
    the last octet arrives. A write that fails never delivered the last octet, so nothing can have been
    accepted: that fails at MAIL too. Once the group is written, a lost connection is an unknown
    outcome (AFTER_DATA), unless MAIL or RCPT was refused already.
    """
    _check_smtputf8(conn, smtputf8)
    message = payload if payload.endswith(b"\r\n") else payload + b"\r\n"  # as the DATA path ends it
    group = _envelope_group(sender, recipient, f"BDAT {len(message)} LAST", smtputf8, mail_parameters,
                            rcpt_parameters) + message
    check_alive(conn)
    if before_dot is not None:
        before_dot()
    _check_budget_after_commit(deadline)
    refusal: SmtpFailure | None = None
    for phase, address in ((MAIL, sender), (RCPT, recipient), (AFTER_DATA, "")):
        with _phase(phase, span_attributes, pipelined=True):
            if phase == MAIL:
                _write_group(conn, group, deadline)
            try:
                # Read as AFTER_DATA: a connection lost now may have carried the whole mail.
                code, reply = _command(conn, AFTER_DATA, conn.getreply, deadline)
            except SmtpFailure:
                if refusal is None:
                    raise
                conn.close()  # lost after a refusal of the envelope: nothing was accepted
                raise refusal from None
            if refusal is not None or phase == AFTER_DATA:
                _note_reply(code)
                if refusal is None and code != 250 and tracing.active():
                    tracing.fail(f"{code} to BDAT LAST")
                continue
            try:
                _check_reply(phase, address, code, reply)
            except SmtpFailure as failure:
                _note_failure(failure)
                refusal = failure
    if refusal is not None:
        if code < 400:  # a server that took the message after refusing its envelope is out of step
            conn.close()
        raise refusal
    return code, reply


def check_alive(conn: DeadlineSMTP) -> None:
    """A non-blocking look at an idle connection: a pending reply (a 421) or an EOF means the server has
    hung up. Raised at MAIL with the connection closed: nothing was sent."""
    sock = _socket(conn)
    if not select.select([sock], [], [], 0)[0] and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return
    try:
        sock.settimeout(0)
        pending = sock.recv(4096)
    except (ssl.SSLWantReadError, BlockingIOError):
        return  # TLS housekeeping (a session ticket), no data: alive
    except OSError as exc:
        conn.close()
        raise _failure(MAIL, exc) from None
    conn.close()
    text = _text(pending)
    if pending[:3] == b"421":
        raise SmtpFailure(MAIL, f"the server closed the idle connection: {text}", 421, reply=text[4:])
    raise SmtpFailure(MAIL, "connection failed: the server closed the idle connection" + (
        f" after {text[:80]!r}" if pending else ""), error=smtplib.SMTPServerDisconnected("closed while idle"))


def _write_group(conn: DeadlineSMTP, group: bytes, deadline: float) -> None:
    """The group in one write. A failed write never delivered the last octet of the chunk: nothing can have
    been accepted, so it fails at MAIL, with the connection closed (a QUIT now would be message octets)."""
    try:
        _arm(conn, MAIL, deadline)
        _socket(conn).sendall(group)
    except OSError as exc:
        conn.close()
        raise _failure(MAIL, exc) from None


# What each envelope phase accepts, and how its refusal reads.
_ACCEPTED = {MAIL: (250,), RCPT: (250, 251), DATA: (354,)}
_REFUSED = {MAIL: "MAIL FROM:<{}> refused", RCPT: "RCPT TO refused", DATA: "DATA refused"}


def _check_reply(phase: str, address: str, code: int, reply: str) -> None:
    _note_reply(code)
    if code not in _ACCEPTED[phase]:
        raise SmtpFailure(phase, f"{_REFUSED[phase].format(address)}: {code} {reply}", code, reply=reply)


def _check_smtputf8(conn: DeadlineSMTP, smtputf8: bool) -> None:
    if smtputf8 and not conn.has_extn("smtputf8"):
        raise SmtpFailure(MAIL, SMTPUTF8_NOT_OFFERED, error=SmtpUtf8NotOffered())
    # smtplib's mail() switches the command encoding to UTF-8 for SMTPUTF8 and only RSET switches it back:
    # every transaction on a pooled connection starts from ASCII.
    conn.command_encoding = "ascii"


def data(conn: DeadlineSMTP, payload: bytes, deadline: float, before_dot=None) -> tuple[int, str]:
    """DATA, then the content (see `content`): the doctor's test mail, one step after RCPT."""
    start_data(conn, deadline)
    return content(conn, payload, deadline, before_dot)


def content(conn: DeadlineSMTP, payload: bytes, deadline: float, before_dot=None) -> tuple[int, str]:
    """The message and the final dot, after a 354; returns the server's reply, which may be a refusal.

    `before_dot()` runs when all but the final dot is sent; an exception from it leaves the DATA
    unfinished, which the server discards when the connection closes.
    """
    _command(conn, DATA, lambda: conn.send(_dot_stuffed(payload)), deadline)
    if before_dot is not None:
        before_dot()
    _send_final_dot(conn, deadline)
    return _command(conn, AFTER_DATA, conn.getreply, deadline)


def _send_final_dot(conn: DeadlineSMTP, deadline: float) -> None:
    """The commit point may have used up the budget: that is found out before a byte of the dot leaves,
    so it is still DATA (nothing transmitted, the key released). From the first byte of the final dot on,
    the server may accept the mail: a failure is an unknown outcome."""
    left = _check_budget_after_commit(deadline)
    if conn.sock is None:
        raise SmtpFailure(DATA, "connection failed: closed before the final dot",
                          error=smtplib.SMTPServerDisconnected("not connected"))
    try:
        set_timeout(conn.sock, left)
        conn.send(b".\r\n")
    except _ERRORS as exc:
        raise _failure(AFTER_DATA, exc) from None


def _check_budget_after_commit(deadline: float) -> float:
    """What is left of the budget after the commit point; a DATA failure (nothing transmitted) when none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise SmtpFailure(DATA, "the time budget ran out before the final dot (at the idempotency commit "
                                "point); the final dot was not sent, so nothing was transmitted",
                          error=BudgetSpentBeforeDot())
    return left


# RSET and QUIT are housekeeping: never wait long for a server that may be gone.
_QUIT_TIMEOUT_SECONDS = 1.0


def reset(conn: DeadlineSMTP) -> bool:
    """RSET after a refused transaction; True if the connection is fit for reuse."""
    if conn.sock is None:  # smtplib closed it already (e.g. after "500 line too long")
        return False
    try:
        _housekeeping(conn)
        return conn.rset()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def close_quietly(conn: DeadlineSMTP) -> None:
    """QUIT, wait for its reply (at most 1 s), and close: outside a request (the doctor, shutdown).
    A mail already accepted must not turn into an error here."""
    try:
        if _may_quit(conn):
            _housekeeping(conn)
            conn.quit()
    except _ERRORS:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def close_without_waiting(conn: DeadlineSMTP) -> None:
    """QUIT without waiting for the reply, then close: what a request does, so hanging up costs it nothing."""
    try:
        if _may_quit(conn):
            sock = _socket(conn)
            sock.settimeout(_QUIT_TIMEOUT_SECONDS)
            sock.sendall(b"QUIT\r\n")
    except OSError:
        pass
    finally:
        conn.close()


def _may_quit(conn: DeadlineSMTP) -> bool:
    # Inside DATA (after a 354, before the reply to the final dot) a QUIT would be a line of the message:
    # closing the socket alone is the hang-up, and the server discards a DATA that never ended.
    return conn.sock is not None and not getattr(conn, "inside_data", False)


def _housekeeping(conn: DeadlineSMTP) -> None:
    conn.deadline = time.monotonic() + _QUIT_TIMEOUT_SECONDS
    _socket(conn).settimeout(_QUIT_TIMEOUT_SECONDS)


def _socket(conn: DeadlineSMTP) -> socket.socket:
    """The connection's socket; SMTPServerDisconnected (as smtplib's send() raises) once it was closed."""
    if conn.sock is None:
        raise smtplib.SMTPServerDisconnected("not connected")
    return conn.sock


def _remaining(phase: str, deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SmtpFailure(phase, "timed out: SMTP time budget exhausted (SMTP_TIMEOUT_SECONDS or the request's "
                                 "timeout_seconds)", error=TimeoutError("SMTP time budget exhausted"))
    return left


def _command(conn: DeadlineSMTP, phase: str, call, deadline: float):
    """Run one SMTP exchange; a network or protocol error becomes SmtpFailure(phase)."""
    try:
        _arm(conn, phase, deadline)
        result = call()
    except _ERRORS as exc:
        raise _failure(phase, exc) from None
    if isinstance(result, tuple):
        code, reply = result
        return code, _text(reply)
    return result


def _arm(conn: DeadlineSMTP, phase: str, deadline: float) -> None:
    conn.deadline = deadline  # every read re-arms the socket timeout to what is left
    set_timeout(_socket(conn), _remaining(phase, deadline))  # for the sends


def _failure(phase: str, exc: BaseException, failed: str = "connection failed", refused: str = "") -> SmtpFailure:
    """An smtplib or socket error of `phase` as SmtpFailure: a reply keeps its code and text (after
    `refused`), anything else reads "`failed`: the cause" (a ReplyTooLong names the line's length)."""
    if isinstance(exc, NotSmtpReply):
        return SmtpFailure(phase, f"this is not an SMTP server: it answered {_text(exc.line)[:80]!r}", error=exc)
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = _text(exc.smtp_error)
        return SmtpFailure(phase, f"{refused}{exc.smtp_code} {reply}", exc.smtp_code, exc, reply)
    return SmtpFailure(phase, f"{failed}: {describe_error(exc)}", error=exc)


def _dot_stuffed(payload: bytes) -> bytes:
    # RFC 5321 4.5.2: a line starting with "." gets another "."; the final dot is sent on its own.
    data = re.sub(rb"(?m)^\.", b"..", payload)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _text(reply) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(str(reply).split())[:300]


def is_timeout(exc: BaseException | None) -> bool:
    # smtplib reports a read timeout as a disconnect ("Connection unexpectedly closed: timed out").
    return isinstance(exc, (socket.timeout, TimeoutError)) or (
        isinstance(exc, smtplib.SMTPServerDisconnected) and "timed out" in str(exc))


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"certificate verification failed: {exc.verify_message} "
                "(SMTP_TLS_CA_FILE adds a CA; SMTP_TLS_VERIFY=false disables checks)")
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]
