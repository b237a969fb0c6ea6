"""`herald-smtp doctor`: walk the SMTP setup of every relay step by step and name the fix.

One block per relay (the primary, then each SMTP_FALLBACK_URLS entry), its
header line naming the relay; in it one line per step: config, DNS, TCP, then
the transport's own steps (TLS and banner, EHLO, STARTTLS, AUTH, MAIL FROM,
and with --to RCPT and a real test mail, one per relay), run one at a time. A
failed step's SmtpFailure (its phase and evidence) is mapped to what happened
and what to change, the way smtp/classify.py maps it to an outcome. A relay's
block stops at its first failure (later steps depend on it) and the doctor
goes on with the next relay; the exit status is 0 only when no step of any
relay failed. Secrets are never printed: the password is only ever handed to
smtplib.

With BOUNCE_IMAP_URL set, a block checks the bounce reader's mailbox the
way `herald-smtp bounces` opens it: connect (TLS), login, the two folders
(created when missing, as the reader would), the inbox.

Last, one block per From domain in use (tools/domain.py): its SPF, DKIM and
DMARC records and the alignment of the envelope sender, asked of DNS; those
lines may also say WARN, which does not fail the doctor. They run whatever
the relay blocks found.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from typing import Callable, Iterable, Iterator, TypeVar

from ..addresses import InvalidAddress, parse_address
from ..bounces import mailbox as imap
from ..config import IMPLICIT_TLS, PLAIN, STARTTLS, Relay, Settings
from ..config.oauth import OAuthClient
from ..metrics import Metrics
from ..network import host_port
from ..sending.message import MailWriter, new_message_id
from ..sending.request import SendRequest
from ..smtp import transport
from ..smtp.classify import is_provider_setup_refusal, is_sender_refusal
from ..smtp.deadline import DeadlineSMTP, NotSmtpReply, ReplyTooLong
from ..smtp.provider_replies import lookup
from ..smtp.tokens import TokenError, TokenSource, fetch_token
from ..smtp.transport import SmtpFailure, describe_error, is_timeout
from .domain import domain_steps, sender_domains
from .steps import FAIL, OK, SKIP, Failed, Step, fail

T = TypeVar("T")

APP_PASSWORD_HINT = (
    "check SMTP_USER and SMTP_PASSWORD; Gmail/Google Workspace, Microsoft 365/Outlook and Yahoo reject the "
    "account password when 2-step verification is on: create an app password and use it as SMTP_PASSWORD"
)
IMPLICIT_TLS_PORT_HINT = (
    "this port seems to expect TLS from the first byte (implicit TLS, usually port 465): "
    "set SMTP_USE_TLS=true and SMTP_USE_STARTTLS=false, or use port 587 with STARTTLS"
)
PLAIN_FIRST_PORT_HINT = (
    "this port talks plain SMTP first (usually 587 or 25): set SMTP_USE_TLS=false and "
    "SMTP_USE_STARTTLS=true, or use port 465 for implicit TLS"
)
RETRY_HINT = "retry; if it persists ask the provider"


def run_doctor(settings: Settings, to: str | None = None, out: Callable[[str], None] = print) -> int:
    failed = False
    for header, steps in _blocks(settings, to):
        out(f"== {header}")
        for step in steps:
            out(step.line())
            failed |= step.status == FAIL
    return 1 if failed else 0


def _blocks(settings: Settings, to: str | None) -> Iterator[tuple[str, Iterable[Step]]]:
    """(header, its steps) of every block, in the order printed; each block's steps run as it is printed."""
    # Without SMTP_HOST there is no relay to check: the primary's block says what is missing.
    relays = settings.relays if settings.smtp_configured else settings.relays[:1]
    for index, relay in enumerate(relays):
        role = "primary relay" if index == 0 else f"fallback relay {index} (SMTP_FALLBACK_URLS)"
        yield f"{role} {relay.name}", Doctor(settings, to, index).steps()
    if settings.bounce_mailbox is not None:
        yield (f"bounce mailbox {settings.bounce_mailbox.where} (BOUNCE_IMAP_URL, read by `herald-smtp bounces`)",
               bounce_mailbox_steps(settings))
    for domain in sender_domains(settings):
        yield f"sender domain {domain}", domain_steps(settings, domain)


def bounce_mailbox_steps(settings: Settings) -> Iterator[Step]:
    """What the bounce reader needs of its mailbox: reachable, the login, the folders, the inbox; and the store."""
    mailbox = settings.bounce_mailbox
    assert mailbox is not None
    box = None
    try:
        if settings.redis_target is None:
            yield Step("store", FAIL, "REDIS_URL is empty: the reader records bounces in the store the service "
                       "shares", "set REDIS_URL (the same as the service's)")
        started = time.monotonic()
        box = _imap_step("connect", lambda: imap.ImapMailbox(
            mailbox, imap.tls_context(settings.bounce_imap_tls_ca_file, settings.bounce_imap_tls_verify)),
            "check the host and port of BOUNCE_IMAP_URL (imaps:// 993, imap:// 143 with STARTTLS) and "
            "BOUNCE_IMAP_TLS_CA_FILE for a private CA")
        mode = "TLS" if mailbox.implicit_tls else "STARTTLS"
        yield Step("connect", OK, f"{mode} to {host_port(mailbox.host, mailbox.port)} in "
                   f"{(time.monotonic() - started) * 1000:.0f} ms")
        _imap_step("login", box.login, "check the user and password in BOUNCE_IMAP_URL (percent-encoded)")
        yield Step("login", OK, f"logged in as {mailbox.user}")
        created = _imap_step("folders", box.prepare_folders, "the account must be allowed to create folders, "
                             "or create Processed and Unrecognised by hand")
        detail = f"{', '.join(box.folders.values())} there" + (f" (created {', '.join(created)})" if created else "")
        yield Step("folders", OK, detail)
        waiting = _imap_step("inbox", box.select, f"check the folder in BOUNCE_IMAP_URL ({mailbox.folder})")
        yield Step("inbox", OK, f"{mailbox.folder}: {waiting} mail(s) waiting")
    except Failed as failed:
        yield failed.step
    finally:
        if box is not None:
            box.close()


def _imap_step(name: str, call: Callable[[], T], fix: str) -> T:
    try:
        return call()
    except imap.ERRORS as exc:
        fail(name, f"{type(exc).__name__}: {exc}", fix)


class Doctor:
    """The steps of one relay (`index` in Settings.relays: 0 is the primary)."""

    def __init__(self, settings: Settings, to: str | None, index: int = 0):
        self.s = settings
        self.index = index
        self.r: Relay = settings.relays[index]
        self.to = to
        self.where = self.r.name
        self.timeout = settings.smtp_timeout_seconds
        self._conn: DeadlineSMTP | None = None
        # The token step fetches the relay's token (noting the endpoint's answer); the auth step logs in with it.
        self._token_answers: list[dict] = []
        self._tokens = (TokenSource(self.r.oauth, self.r.name, Metrics(), fetch=self._fetch_token)
                        if self.r.oauth is not None else None)

    def steps(self) -> Iterator[Step]:
        try:
            yield self._config()
            yield self._dns()
            yield self._tcp()
            yield from self._connect()
            yield self._ehlo()
            if self.r.tls == STARTTLS:
                yield self._starttls()
            if self.r.oauth is not None and self.r.user:
                yield self._token()
            yield self._auth()
            yield self._mail_from()
            yield from self._recipient_and_test_mail()
        except Failed as failed:
            yield failed.step
        finally:
            if self._conn is not None:
                transport.close_quietly(self._conn)

    @property
    def conn(self) -> DeadlineSMTP:
        """The session _connect opened; the steps after it run only once it has."""
        if self._conn is None:
            raise RuntimeError("no SMTP session: the connect step runs first")
        return self._conn

    # --- probes before SMTP: is the host there at all?

    def _config(self) -> Step:
        if not self.s.smtp_configured:
            missing = [name for name, value in (("SMTP_HOST", self.s.smtp_host), ("SMTP_FROM", self.s.smtp_from))
                       if not value]
            fail("config", f"{' and '.join(missing)} empty", "set them in .env or the environment")
        if self.to:
            try:
                parse_address(self.to)
            except InvalidAddress as exc:
                fail("config", f"--to {self.to!r} is not a valid email address: {exc}", "pass one plain address")
        mode = {IMPLICIT_TLS: "implicit TLS", STARTTLS: "STARTTLS", PLAIN: "plain (no TLS)"}[self.r.tls]
        auth = f"AUTH as {self.r.user}" if self.r.user else "no AUTH"
        return Step("config", OK, f"{self.where}, {mode}, {auth}, from {self.r.from_address}")

    def _dns(self) -> Step:
        try:
            infos = socket.getaddrinfo(self.r.host, self.r.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            fail("dns", f"cannot resolve {self.r.host}: {exc.strerror}", "check SMTP_HOST and DNS")
        except UnicodeError as exc:  # a name IDNA cannot encode, e.g. an empty label
            fail("dns", f"SMTP_HOST {self.r.host!r} is not a valid host name ({exc})", "check SMTP_HOST")
        addresses = sorted({str(info[4][0]) for info in infos})
        return Step("dns", OK, f"{self.r.host} -> {', '.join(addresses)}")

    def _tcp(self) -> Step:
        started = time.monotonic()
        try:
            socket.create_connection((self.r.host, self.r.port), timeout=self.timeout).close()
        except ConnectionRefusedError:
            fail("tcp", f"connection to {self.where} refused",
                  "nothing listens there: check SMTP_HOST and SMTP_PORT (587 STARTTLS, 465 implicit TLS, 25 relay)")
        except (TimeoutError, socket.timeout):
            fail("tcp", f"no answer from {self.where} within {self.timeout:g}s",
                  "a firewall may drop the traffic (many clouds block port 25); check SMTP_PORT")
        except OSError as exc:
            fail("tcp", f"cannot connect to {self.where}: {describe_error(exc)}", "check SMTP_HOST and SMTP_PORT")
        return Step("tcp", OK, f"connected to {self.where} in {(time.monotonic() - started) * 1000:.0f} ms")

    # --- the transport's steps, one at a time

    def _run(self, name: str, step: Callable[[float], T]) -> T:
        """Run one transport step with its own SMTP_TIMEOUT_SECONDS; a failure becomes this step's FAIL line."""
        try:
            return step(time.monotonic() + self.timeout)
        except SmtpFailure as failure:
            fail(name, *self._diagnose(name, failure))

    def _connect(self) -> Iterator[Step]:
        # smtplib opens TCP, the implicit-TLS handshake and reads the greeting in one call.
        name = "tls" if self.r.tls == IMPLICIT_TLS else "banner"
        self._conn = self._run(name, lambda deadline: transport.connect(self.r, transport.tls_context(self.r),
                                                                        deadline))
        if self.r.tls == IMPLICIT_TLS:
            yield Step("tls", OK, f"implicit TLS: {_describe_tls(self.conn.sock)}")
        yield Step("banner", OK, "220 greeting received")

    def _ehlo(self) -> Step:
        self._run("ehlo", lambda deadline: transport.ehlo(self.conn, deadline))
        features = ", ".join(sorted(k.upper() for k in self.conn.esmtp_features)) or "none"
        hint = ""
        if self.r.tls == PLAIN and self.conn.has_extn("starttls"):
            hint = "the server offers STARTTLS: set SMTP_USE_STARTTLS=true so mail and password travel encrypted"
        return Step("ehlo", OK, f"extensions: {features}", hint)

    def _starttls(self) -> Step:
        self._run("starttls", lambda deadline: transport.starttls(self.conn, self.r, transport.tls_context(self.r),
                                                                  deadline))
        return Step("starttls", OK, _describe_tls(self.conn.sock))

    def _auth(self) -> Step:
        if not self.r.user:
            why = "SMTP_USER is empty" if self.index == 0 else "no user in the URL"
            return Step("auth", SKIP, f"{why}: no AUTH")
        self._run("auth", lambda deadline: transport.login(self.conn, self.r, deadline, self._tokens))
        return Step("auth", OK, f"logged in as {self.r.user} with {transport.auth_mechanism(self.conn, self.r)}")

    def _token(self) -> Step:
        """The token the auth step will use: the grant, the endpoint's answer, the lifetime and scope (never the
        token itself)."""
        client, tokens = self.r.oauth, self._tokens
        if client is None or tokens is None:
            raise RuntimeError("the token step runs only for a relay with OAuth")
        try:
            tokens.get(time.monotonic() + self.timeout)
        except TokenError as error:
            fix = ("check SMTP_OAUTH_CLIENT_ID, SMTP_OAUTH_CLIENT_SECRET (or SMTP_OAUTH_REFRESH_TOKEN) and "
                   "SMTP_OAUTH_SCOPE against the app registration" if error.setup else
                   f"check that this host reaches {client.token_host} on port 443; {RETRY_HINT}")
            fail("token", error.detail, fix)
        answer = self._token_answers[-1] if self._token_answers else {}
        scope = answer.get("scope") or client.scope or "(none named)"
        return Step("token", OK, f"{client.grant} grant from {client.token_host}: a token for "
                                 f"{answer.get('expires_in', '?')} s, scope {scope}")

    def _fetch_token(self, client: OAuthClient, relay: str, timeout: float) -> dict:
        answer = fetch_token(client, relay, timeout)
        self._token_answers.append({name: answer.get(name) for name in ("expires_in", "scope")})
        return answer

    def _mail_from(self) -> Step:
        self._run("mail from", lambda deadline: transport.mail_from(self.conn, self.r.envelope_sender, deadline))
        return Step("mail from", OK, f"<{self.r.envelope_sender}> accepted")

    def _recipient_and_test_mail(self) -> Iterator[Step]:
        if not self.to:
            if not transport.reset(self.conn):
                fail("rset", "RSET after MAIL FROM was refused or the connection dropped", RETRY_HINT)
            yield Step("rcpt", SKIP, "no test mail (add --to ADDRESS to send one)")
            return
        to = self.to
        self._run("rcpt", lambda deadline: transport.rcpt_to(self.conn, to, deadline))
        yield Step("rcpt", OK, f"<{to}> accepted")
        message_id = new_message_id(self.s)
        request = SendRequest(to=parse_address(to), subject="herald-smtp doctor test mail",
                              body="This is a test mail sent by `herald-smtp doctor`. No action is needed.")
        payload = MailWriter(self.s).build(request, message_id).payload_for(self.index)
        code, reply = self._run("test mail", lambda deadline: transport.data(self.conn, payload, deadline))
        if code != 250:
            failure = SmtpFailure(transport.AFTER_DATA, reply, code, reply=reply)
            fail("test mail", *self._diagnose("test mail", failure))
        yield Step("test mail", OK, f"accepted: {code} {reply} (Message-ID <{message_id}>)")

    def _diagnose(self, step: str, failure: SmtpFailure) -> tuple[str, str]:
        """(what happened, the fix) for a failed step: the first rule of HINTS that matches."""
        evidence = _evidence(failure)
        error = failure.error
        provider = lookup(failure.reply) if "provider" in evidence else None
        facts = {
            "code": failure.code, "reply": failure.reply, "detail": failure.detail,
            "error": describe_error(error) if error else failure.detail,
            "timeout": f"{self.timeout:g}", "sender": self.r.from_address, "to": self.to,
            "verify": getattr(error, "verify_message", ""),
            "certificate_fix": (_certificate_hint(error, self.r) if isinstance(error, ssl.SSLCertVerificationError)
                                else ""),  # the "certificate" evidence (see _evidence)
            # the "provider" evidence: the send_failed message names the same fix (classify's 5xx_setup)
            "problem": provider.problem if provider else "", "provider_fix": provider.fix if provider else "",
        }
        if step == "auth" and failure.code is None and failure.error is None:
            # The send's error says the same (transport.auth_problem): AUTH not offered, only after STARTTLS,
            # or with no mechanism in common.
            facts["auth_problem"], facts["auth_fix"] = transport.auth_problem(self.conn, self.r)
        for steps, tag, what, fix in HINTS:
            if (steps == ANY or step in steps) and (tag == ANY or tag in evidence):
                return what.format(**facts), fix.format(**facts)
        raise AssertionError("unreachable: the last rule matches everything")


def _evidence(failure: SmtpFailure) -> set[str]:
    """What a failed step showed, as the tags HINTS is keyed on."""
    error, code, reply = failure.error, failure.code, failure.reply
    if code is not None:
        tags = {"reply"}
        if code == 530:
            tags |= {"530", "530_starttls"} if "starttls" in reply.lower() else {"530"}
        if is_sender_refusal(reply):
            tags.add("sender_refusal")
        if is_provider_setup_refusal(code, reply):
            tags.add("provider")
        return tags
    if error is None:
        return {"not_offered"}  # we stopped: STARTTLS or AUTH not offered
    if isinstance(error, ssl.SSLCertVerificationError):
        return {"certificate"}
    if isinstance(error, ssl.SSLError):
        return {"tls"}
    if is_timeout(error):
        return {"timeout"}
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return {"closed"}
    if isinstance(error, NotSmtpReply):
        return {"not_smtp"}
    if isinstance(error, ReplyTooLong):
        return {"too_long"}
    if isinstance(error, smtplib.SMTPException):  # before OSError, its base class
        return {"protocol"}
    return {"network"}


ANY = "*"
# (steps, evidence, what happened, the fix): the first match wins. "tls" is the implicit-TLS
# connect (handshake and greeting in one), "banner" the plain-first one.
HINTS: tuple[tuple[tuple[str, ...] | str, str, str, str], ...] = (
    (ANY, "certificate", "certificate rejected: {verify}", "{certificate_fix}"),
    (ANY, "not_smtp", "{detail}", "the port answers, but not as an SMTP server: check SMTP_HOST and SMTP_PORT "
                                  "(587 STARTTLS, 465 implicit TLS, 25 relay)"),
    (ANY, "too_long", "{detail}", "a reply line longer than SMTP allows (512 bytes): a broken server or a proxy "
                                  "in between; ask the provider"),
    # A big provider's own wording for a setup problem (smtp/provider_replies.py), in any step.
    (ANY, "provider", "{problem}: {code} {reply}", "{provider_fix}"),
    (("tls",), "tls", "TLS handshake failed: {error}", PLAIN_FIRST_PORT_HINT),
    (("tls",), "timeout", "no TLS handshake or greeting within {timeout}s", PLAIN_FIRST_PORT_HINT),
    (("tls",), ANY, "TLS connection failed: {error}", PLAIN_FIRST_PORT_HINT),
    (("banner",), "timeout", "no SMTP greeting within {timeout}s", IMPLICIT_TLS_PORT_HINT),
    (("banner",), "reply", "server refused the session: {code} {reply}",
     "the server does not accept this client now; ask the provider"),
    (("banner",), "closed", "the server closed the connection before greeting", IMPLICIT_TLS_PORT_HINT),
    (("banner",), ANY, "no greeting: {error}", "check SMTP_HOST and SMTP_PORT"),
    (("ehlo",), "reply", "EHLO refused: {code} {reply}", "the server does not speak ESMTP to this client"),
    (("starttls",), "not_offered", "the server does not offer STARTTLS (SMTP_USE_STARTTLS=true)",
     "use the provider's submission port 587, or port 465 with SMTP_USE_TLS=true; set SMTP_USE_STARTTLS=false "
     "only for a server that truly has no TLS (mail goes unencrypted)"),
    (("starttls",), "tls", "TLS handshake failed: {error}",
     "the server's TLS setup is broken or too old; ask the provider"),
    (("starttls",), "reply", "STARTTLS refused: {code} {reply}",
     "the server offers but refuses STARTTLS; ask the provider"),
    (("starttls",), ANY, "STARTTLS failed: {error}", RETRY_HINT),
    (("auth",), "not_offered", "{auth_problem}", "{auth_fix}"),
    (("auth",), "reply", "authentication failed: {code} {reply}", APP_PASSWORD_HINT),
    # Some servers hang up on bad credentials.
    (("auth",), "closed", "authentication failed: {error}", APP_PASSWORD_HINT),
    (("auth",), "protocol", "authentication failed: {error}", APP_PASSWORD_HINT),
    (("auth",), ANY, "connection failed during AUTH: {error}", "retry; check the network"),
    (("mail from",), "530_starttls", "{code} {reply}",
     "the server wants TLS first: set SMTP_USE_STARTTLS=true (port 587) or SMTP_USE_TLS=true (port 465)"),
    (("mail from",), "530", "{code} {reply}", "the server wants authentication: set SMTP_USER and SMTP_PASSWORD"),
    (("mail from",), "reply", "sender <{sender}> refused: {code} {reply}",
     "set SMTP_FROM to an address (or domain) this account is allowed to send as; many providers want a "
     "verified sender"),
    (("rcpt",), "sender_refusal", "sender or relaying refused at RCPT: {code} {reply}",
     "set SMTP_FROM to an address this account may send as, and SMTP_USER/SMTP_PASSWORD if the server only "
     "relays for authenticated clients"),
    (("rcpt",), "reply", "recipient <{to}> refused: {code} {reply}", "check the address"),
    (("test mail",), "reply", "message refused: {code} {reply}", "the server's reply says why"),
    (ANY, ANY, "connection failed: {error}", RETRY_HINT),
)


def _certificate_hint(exc: ssl.SSLCertVerificationError, relay: Relay) -> str:
    message = exc.verify_message or ""
    if "mismatch" in message:
        return (f"the certificate does not name SMTP_HOST={relay.host}: set SMTP_HOST to the host name "
                "on the certificate")
    if "expired" in message:
        return "the server's certificate has expired: the mail provider must renew it"
    return ("the certificate is not trusted (self-signed or a private CA): set SMTP_TLS_CA_FILE to the CA bundle "
            "that signed it (SMTP_TLS_VERIFY=false only for testing)")


def _describe_tls(sock) -> str:
    version = sock.version() if hasattr(sock, "version") else "TLS"
    cert = sock.getpeercert() if hasattr(sock, "getpeercert") else None
    if not cert:
        return f"{version}, certificate not verified (SMTP_TLS_VERIFY=false)"
    subject = dict(item[0] for item in cert.get("subject", ())).get("commonName", "")
    names = ", ".join(value for _, value in cert.get("subjectAltName", ()))
    return f"{version}, certificate for {subject or names} valid until {cert.get('notAfter', '?')}"
