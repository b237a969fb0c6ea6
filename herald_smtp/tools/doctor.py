"""`herald-smtp doctor`: walk the SMTP setup step by step and name the fix.

One line per step: config, DNS, TCP, TLS/banner, EHLO, STARTTLS, AUTH,
MAIL FROM, and with --to a RCPT and a real test mail. It stops at the first
failure (later steps depend on it). Exit status 0 only when no step failed.
Secrets are never printed: the password is only ever handed to smtplib.
"""

from __future__ import annotations

import email.policy
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from ..addresses import parse_address
from ..config import Settings
from ..smtp.classify import is_sender_refusal
from ..smtp.transport import describe_error, tls_context
from ..sending.message import build_message, new_message_id
from ..sending.request import SendRequest

OK, FAIL, SKIP = "ok", "FAIL", "skip"

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


@dataclass(frozen=True)
class Step:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name:<10} {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


class _Failed(Exception):
    def __init__(self, step: Step):
        self.step = step


def run_doctor(settings: Settings, to: str | None = None, out: Callable[[str], None] = print) -> int:
    failed = False
    for step in Doctor(settings, to).steps():
        out(step.line())
        failed |= step.status == FAIL
    return 1 if failed else 0


class Doctor:
    def __init__(self, settings: Settings, to: str | None):
        self.s = settings
        self.to = to
        self.where = f"{settings.smtp_host}:{settings.smtp_port}"
        self.timeout = settings.smtp_timeout_seconds
        self.conn: smtplib.SMTP | None = None

    def steps(self) -> Iterator[Step]:
        try:
            yield self._config()
            yield self._dns()
            yield self._tcp()
            if self.s.smtp_use_tls:
                yield self._implicit_tls()
            yield self._banner()
            yield self._ehlo()
            if self.s.smtp_use_starttls:
                yield self._starttls()
            yield self._auth()
            yield self._mail_from()
            yield from self._recipient_and_test_mail()
        except _Failed as failed:
            yield failed.step
        finally:
            self._close()

    # --- steps

    def _config(self) -> Step:
        if not self.s.smtp_configured:
            missing = [name for name, value in (("SMTP_HOST", self.s.smtp_host), ("SMTP_FROM", self.s.smtp_from))
                       if not value]
            self._fail("config", f"{' and '.join(missing)} empty", "set them in .env or the environment")
        mode = "implicit TLS" if self.s.smtp_use_tls else "STARTTLS" if self.s.smtp_use_starttls else "plain (no TLS)"
        auth = f"AUTH as {self.s.smtp_user}" if self.s.smtp_user else "no AUTH"
        return Step("config", OK, f"{self.where}, {mode}, {auth}, from {self.s.smtp_from}")

    def _dns(self) -> Step:
        try:
            infos = socket.getaddrinfo(self.s.smtp_host, self.s.smtp_port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            self._fail("dns", f"cannot resolve {self.s.smtp_host}: {exc.strerror}", "check SMTP_HOST and DNS")
        addresses = sorted({info[4][0] for info in infos})
        return Step("dns", OK, f"{self.s.smtp_host} -> {', '.join(addresses)}")

    def _tcp(self) -> Step:
        started = time.monotonic()
        try:
            socket.create_connection((self.s.smtp_host, self.s.smtp_port), timeout=self.timeout).close()
        except ConnectionRefusedError:
            self._fail("tcp", f"connection to {self.where} refused",
                       "nothing listens there: check SMTP_HOST and SMTP_PORT (587 STARTTLS, 465 implicit TLS, 25 relay)")
        except (TimeoutError, socket.timeout):
            self._fail("tcp", f"no answer from {self.where} within {self.timeout:g}s",
                       "a firewall may drop the traffic (many clouds block port 25); check SMTP_PORT")
        except OSError as exc:
            self._fail("tcp", f"cannot connect to {self.where}: {describe_error(exc)}", "check SMTP_HOST and SMTP_PORT")
        return Step("tcp", OK, f"connected to {self.where} in {(time.monotonic() - started) * 1000:.0f} ms")

    def _implicit_tls(self) -> Step:
        try:
            self.conn = smtplib.SMTP_SSL(self.s.smtp_host, self.s.smtp_port, timeout=self.timeout,
                                         context=tls_context(self.s))
        except ssl.SSLCertVerificationError as exc:
            self._fail("tls", f"certificate rejected: {exc.verify_message}", _certificate_hint(exc, self.s))
        except ssl.SSLError as exc:
            self._fail("tls", f"TLS handshake failed: {describe_error(exc)}", PLAIN_FIRST_PORT_HINT)
        except (TimeoutError, socket.timeout):
            self._fail("tls", f"no TLS handshake or greeting within {self.timeout:g}s", PLAIN_FIRST_PORT_HINT)
        except (OSError, smtplib.SMTPException) as exc:
            self._fail("tls", f"TLS connection failed: {describe_error(exc)}", PLAIN_FIRST_PORT_HINT)
        return Step("tls", OK, f"implicit TLS: {_describe_tls(self.conn.sock)}")

    def _banner(self) -> Step:
        if self.conn is None:  # plain first (STARTTLS or no TLS)
            try:
                self.conn = smtplib.SMTP(self.s.smtp_host, self.s.smtp_port, timeout=self.timeout)
            except (TimeoutError, socket.timeout):
                self._fail("banner", f"no SMTP greeting within {self.timeout:g}s", IMPLICIT_TLS_PORT_HINT)
            except smtplib.SMTPConnectError as exc:
                self._fail("banner", f"server refused the session: {exc.smtp_code} {_text(exc.smtp_error)}",
                           "the server does not accept this client now; ask the provider")
            except smtplib.SMTPServerDisconnected as exc:
                # smtplib reports a read timeout as a disconnect ("... closed: timed out").
                what = (f"no SMTP greeting within {self.timeout:g}s" if "timed out" in str(exc)
                        else "the server closed the connection before greeting")
                self._fail("banner", what, IMPLICIT_TLS_PORT_HINT)
            except (OSError, smtplib.SMTPException) as exc:
                self._fail("banner", f"no greeting: {describe_error(exc)}", "check SMTP_HOST and SMTP_PORT")
        return Step("banner", OK, "220 greeting received")

    def _ehlo(self) -> Step:
        code, text = self._ask("ehlo", self.conn.ehlo)
        if code != 250:
            self._fail("ehlo", f"EHLO refused: {code} {_text(text)}", "the server does not speak ESMTP to this client")
        features = ", ".join(sorted(k.upper() for k in self.conn.esmtp_features)) or "none"
        hint = ""
        if not (self.s.smtp_use_tls or self.s.smtp_use_starttls) and self.conn.has_extn("starttls"):
            hint = "the server offers STARTTLS: set SMTP_USE_STARTTLS=true so mail and password travel encrypted"
        return Step("ehlo", OK, f"extensions: {features}", hint)

    def _starttls(self) -> Step:
        if not self.conn.has_extn("starttls"):
            self._fail("starttls", "the server does not offer STARTTLS (SMTP_USE_STARTTLS=true)",
                       "use the provider's submission port 587, or port 465 with SMTP_USE_TLS=true; set "
                       "SMTP_USE_STARTTLS=false only for a server that truly has no TLS (mail goes unencrypted)")
        try:
            code, text = self.conn.starttls(context=tls_context(self.s))
        except ssl.SSLCertVerificationError as exc:
            self._fail("starttls", f"certificate rejected: {exc.verify_message}", _certificate_hint(exc, self.s))
        except ssl.SSLError as exc:
            self._fail("starttls", f"TLS handshake failed: {describe_error(exc)}",
                       "the server's TLS setup is broken or too old; ask the provider")
        except smtplib.SMTPResponseException as exc:
            self._fail("starttls", f"STARTTLS refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                       "the server offers but refuses STARTTLS; ask the provider")
        except (OSError, smtplib.SMTPException) as exc:
            self._fail("starttls", f"STARTTLS failed: {describe_error(exc)}", "retry; if it persists ask the provider")
        self._ask("starttls", self.conn.ehlo)
        return Step("starttls", OK, _describe_tls(self.conn.sock))

    def _auth(self) -> Step:
        if not self.s.smtp_user:
            return Step("auth", SKIP, "SMTP_USER is empty: no AUTH")
        if not self.conn.has_extn("auth"):
            hint = ("the server offers AUTH only over TLS: set SMTP_USE_STARTTLS=true"
                    if not (self.s.smtp_use_tls or self.s.smtp_use_starttls)
                    else "leave SMTP_USER empty if this server relays without login, or use the submission port 587")
            self._fail("auth", "the server does not offer AUTH", hint)
        try:
            self.conn.login(self.s.smtp_user, self.s.smtp_password)
        except smtplib.SMTPAuthenticationError as exc:
            self._fail("auth", f"authentication failed: {exc.smtp_code} {_text(exc.smtp_error)}", APP_PASSWORD_HINT)
        except smtplib.SMTPException as exc:
            self._fail("auth", f"authentication failed: {describe_error(exc)}", APP_PASSWORD_HINT)
        except OSError as exc:
            self._fail("auth", f"connection failed during AUTH: {describe_error(exc)}", "retry; check the network")
        return Step("auth", OK, f"logged in as {self.s.smtp_user}")

    def _mail_from(self) -> Step:
        code, text = self._ask("mail from", lambda: self.conn.mail(self.s.smtp_from))
        if code == 530 and "starttls" in _text(text).lower():
            self._fail("mail from", f"{code} {_text(text)}", "the server wants TLS first: set SMTP_USE_STARTTLS=true "
                       "(port 587) or SMTP_USE_TLS=true (port 465)")
        if code == 530:
            self._fail("mail from", f"{code} {_text(text)}", "the server wants authentication: set SMTP_USER and "
                       "SMTP_PASSWORD")
        if code != 250:
            self._fail("mail from", f"sender <{self.s.smtp_from}> refused: {code} {_text(text)}",
                       "set SMTP_FROM to an address (or domain) this account is allowed to send as; many "
                       "providers want a verified sender")
        return Step("mail from", OK, f"<{self.s.smtp_from}> accepted")

    def _recipient_and_test_mail(self) -> Iterator[Step]:
        if not self.to:
            self._ask("rset", self.conn.rset)
            yield Step("rcpt", SKIP, "no test mail (add --to ADDRESS to send one)")
            return
        code, text = self._ask("rcpt", lambda: self.conn.rcpt(self.to))
        if code not in (250, 251):
            if is_sender_refusal(_text(text)):
                self._fail("rcpt", f"sender or relaying refused at RCPT: {code} {_text(text)}",
                           "set SMTP_FROM to an address this account may send as, and SMTP_USER/SMTP_PASSWORD "
                           "if the server only relays for authenticated clients")
            self._fail("rcpt", f"recipient <{self.to}> refused: {code} {_text(text)}", "check the address")
        yield Step("rcpt", OK, f"<{self.to}> accepted")
        message_id = new_message_id(self.s)
        request = SendRequest(to=parse_address(self.to), subject="herald-smtp doctor test mail",
                              body="This is a test mail sent by `herald-smtp doctor`. No action is needed.")
        payload = build_message(request, self.s, message_id).as_bytes(policy=email.policy.SMTP)
        code, text = self._ask("test mail", lambda: self.conn.data(payload))
        if code != 250:
            self._fail("test mail", f"message refused: {code} {_text(text)}", "the server's reply says why")
        yield Step("test mail", OK, f"accepted: {code} {_text(text)} (Message-ID <{message_id}>)")

    # --- helpers

    def _ask(self, name: str, call) -> tuple[int, bytes]:
        try:
            return call()
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code, exc.smtp_error
        except (OSError, smtplib.SMTPException) as exc:
            self._fail(name, f"connection failed: {describe_error(exc)}", "retry; if it persists ask the provider")

    def _fail(self, name: str, detail: str, fix: str):
        raise _Failed(Step(name, FAIL, detail, fix))

    def _close(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.quit()
        except (OSError, smtplib.SMTPException):
            self.conn.close()


def _certificate_hint(exc: ssl.SSLCertVerificationError, settings: Settings) -> str:
    message = exc.verify_message or ""
    if "mismatch" in message:
        return (f"the certificate does not name SMTP_HOST={settings.smtp_host}: set SMTP_HOST to the host name "
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


def _text(reply) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(str(reply).split())[:200]
