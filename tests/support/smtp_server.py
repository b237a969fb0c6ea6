"""A real SMTP server for the tests: aiosmtpd in a thread, with TLS, AUTH and fault knobs.

TLS certificates come from trustme; faults are injected per SMTP phase
(inject(phase, reply/drop/delay/times)). It offers SMTPUTF8 (RFC 6531), as
aiosmtpd's Controller does by default; smtputf8=False makes a server that does
not (no SMTPUTF8 in the EHLO, non-ASCII commands refused). It offers
PIPELINING (RFC 2920), as real servers do; pipelining=False leaves it out of
the EHLO, which makes clients talk one command at a time. chunking=True offers
CHUNKING (RFC 3030) too and takes BDAT: the chunks of a transaction are joined
and `BDAT <n> LAST` ends the mail as the final dot does (the "message" phase's
faults, the same recording; Received.chunked says which way a mail came).
Anything that cannot start raises RuntimeError saying what is missing; nothing
here skips a test.

OAuth (issue #22): oauth=<OAuthTestServer> adds XOAUTH2 and OAUTHBEARER
(RFC 7628) logins whose bearer token is checked against that token server, with
Google's and Microsoft's refusal flow (a 334 carrying a JSON error, the
client's empty line, then a 535). auth_mechanisms chooses what the EHLO offers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.policy
import json
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from pathlib import Path
from typing import TYPE_CHECKING

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope

from .net import LOCALHOST, free_port

if TYPE_CHECKING:
    from .oauth_server import OAuthTestServer

# Every AUTH mechanism this server can offer; PASSWORD_MECHANISMS are aiosmtpd's own.
PASSWORD_MECHANISMS = ("LOGIN", "PLAIN")
OAUTH_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
GOOGLE_REFUSAL = "535 5.7.8 Username and Password not accepted"
MICROSOFT_REFUSAL = "535 5.7.3 Authentication unsuccessful"

@dataclass
class Received:
    """One mail as the SMTP test server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    mail_options: list[str] = field(default_factory=list)  # the MAIL FROM parameters, upper-cased ("SMTPUTF8")
    rcpt_options: list[str] = field(default_factory=list)
    smtp_utf8: bool = False  # MAIL FROM asked for SMTPUTF8
    chunked: bool = False  # came by BDAT (CHUNKING), not DATA


def _parse(envelope) -> Received:
    raw = bytes(envelope.original_content)
    if envelope.smtp_utf8:
        # RFC 6532: the headers of an SMTPUTF8 mail are UTF-8. BytesParser reads them as ASCII (the bytes
        # beyond it as surrogates), so read them as a receiving SMTPUTF8 client does.
        message = Parser(policy=email.policy.default).parsestr(raw.decode("utf-8", "surrogateescape"))
    else:
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
    return Received(envelope.mail_from, list(envelope.rcpt_tos), raw, message, list(envelope.mail_options),
                    list(envelope.rcpt_options), envelope.smtp_utf8, bool(envelope.chunks))


class _ChunkedEnvelope(Envelope):
    """An envelope that also holds the BDAT chunks received so far (RSET and the end of a mail drop it)."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []


@dataclass
class OAuthLogin:
    """One XOAUTH2 / OAUTHBEARER login as the server saw it. The token is kept for valid() checks, never shown."""

    mechanism: str
    user: str
    token: str = field(repr=False)
    accepted: bool


def parse_xoauth2(response: bytes) -> tuple[str, str] | None:
    """(user, token) from "user=U\x01auth=Bearer T\x01\x01"; None if it is not that."""
    parts = response.decode("utf-8", "replace").split("\x01")
    if len(parts) < 3 or parts[-2:] != ["", ""]:
        return None
    pairs = dict(part.partition("=")[::2] for part in parts[:-2])
    return _user_and_token(pairs.get("user"), pairs.get("auth"))


def parse_oauthbearer(response: bytes) -> tuple[str, str] | None:
    """(user, token) from RFC 7628's "n,a=U,\x01auth=Bearer T\x01\x01" (host= and port= pairs allowed)."""
    header, sep, rest = response.decode("utf-8", "replace").partition("\x01")
    fields = header.split(",")
    if not sep or len(fields) != 3 or not fields[1].startswith("a=") or not rest.endswith("\x01\x01"):
        return None
    user = fields[1][2:].replace("=2C", ",").replace("=3D", "=")  # RFC 5801 saslname escapes
    pairs = dict(part.partition("=")[::2] for part in rest[:-2].split("\x01") if part)
    return _user_and_token(user, pairs.get("auth"))


def _user_and_token(user: str | None, auth: str | None) -> tuple[str, str] | None:
    scheme, _, token = (auth or "").partition(" ")
    if not user or scheme.lower() != "bearer" or not token:
        return None
    return user, token


# Where a fault can be injected, in the order a session meets them.
# "data" is the DATA command (before 354); "message" is the end of the mail (after the final dot, or the
# octets of BDAT ... LAST).
PHASES = ("ehlo", "mail", "rcpt", "data", "message", "quit")


@dataclass
class Fault:
    phase: str
    reply: str | None = None  # answer this instead of going on
    drop: bool = False  # hang up without answering
    delay: float = 0.0  # stall this long first
    times: int | None = None  # how many sessions it hits; None: every one


class _FaultyHandler:
    """aiosmtpd handler: records mail, obeys the owner's injected faults."""

    def __init__(self, owner: "SmtpTestServer"):
        self.owner = owner

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        reply = await self.owner._apply_fault("ehlo", server)
        if reply:
            return [reply]
        if self.owner.pipelining:
            # aiosmtpd reads one command at a time from its buffer, so it serves a pipelined group as is.
            responses.insert(1, "250-PIPELINING")
        if self.owner.chunking:
            responses.insert(1, "250-CHUNKING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # auth_required=True in aiosmtpd warns on every connection when TLS is
        # not required, so the "must authenticate first" rule lives here.
        if (self.owner.auth or self.owner.oauth) and not session.authenticated:
            return "530 5.7.0 Authentication required"
        reply = await self.owner._apply_fault("mail", server)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rejected = {a.lower() for a in self.owner.reject_rcpt}
        if address.lower() in rejected:
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        reply = await self.owner._apply_fault("rcpt", server)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        received = _parse(envelope)
        # A drop here was transmitted but never answered: kept in .dropped.
        reply = await self.owner._apply_fault("message", server, dropping=received)
        if reply:
            return reply
        self.owner._record(self.owner._messages, received)
        return "250 OK: queued"


class _TrackedSMTP(SMTP):
    """SMTP session that tells the owner when its connection opens and closes."""

    def __init__(self, owner: "SmtpTestServer", *args, **kwargs):
        self._owner = owner
        super().__init__(*args, **kwargs)

    def connection_made(self, transport):
        super().connection_made(transport)
        # Called again after STARTTLS; a set keeps that idempotent.
        self._owner._live.add(self)

    def connection_lost(self, error):
        self._owner._live.discard(self)
        super().connection_lost(error)

    # aiosmtpd collects auth_<NAME> methods as AUTH mechanisms; it calls them as method(self, args).
    async def auth_XOAUTH2(self, _, args: list[str]) -> AuthResult:
        return await self._owner._oauth_login(self, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, _, args: list[str]) -> AuthResult:
        return await self._owner._oauth_login(self, "OAUTHBEARER", args)

    # Every MAIL, RCPT, RSET (and BDAT, below) as it arrived, before any check: "nothing was sent" can be seen.
    async def smtp_MAIL(self, arg):
        self._owner._note("MAIL", arg)
        # What came in the same write is already buffered: a pipelining client's RCPT and DATA.
        self._owner._note_group(bytes(self._reader._buffer))
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg):
        self._owner._note("RCPT", arg)
        await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg):
        self._owner._note("RSET", arg)
        await super().smtp_RSET(arg)

    async def smtp_DATA(self, arg):
        # No handler hook exists before the 354, so the "data" phase lives here.
        if not self.envelope.rcpt_tos and self._owner.data_reply_without_recipients:
            await self.push(self._owner.data_reply_without_recipients)  # a broken server's answer
            return
        if self.envelope.rcpt_tos:
            reply = await self._owner._apply_fault("data", self)
            if reply:
                await self.push(reply)
                return
        await super().smtp_DATA(arg)

    def _create_envelope(self) -> Envelope:
        return _ChunkedEnvelope()

    async def smtp_BDAT(self, arg):
        """RFC 3030: `BDAT <size> [LAST]` and exactly <size> octets; LAST ends the mail as the final dot does."""
        if not self._owner.chunking:
            await self.push('500 Error: command "BDAT" not recognized')  # aiosmtpd's answer to any unknown verb
            return
        size, _, last = (arg or "").partition(" ")
        if not size.isdigit() or last.upper() not in ("", "LAST"):
            # The chunk's size is unknown, so where the next command starts is too: end the session.
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            self.transport.close()
            return
        self._owner._note("BDAT", arg)
        chunk = await self._reader.readexactly(int(size))  # a lost connection cancels this, as inside DATA
        envelope = self.envelope
        if not envelope.rcpt_tos:  # MAIL or RCPT refused (pipelined with it): the octets are read and dropped
            self._set_post_data_state()
            await self.push("503 5.5.1 Error: need MAIL and RCPT first")
            return
        envelope.chunks.append(chunk)
        if not last:
            await self.push(f"250 2.0.0 {len(chunk)} octets received")
            return
        envelope.original_content = envelope.content = b"".join(envelope.chunks)
        status = await self._call_handler_hook("DATA")  # the handler's end of mail: faults, recording
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_QUIT(self, arg):
        reply = await self._owner._apply_fault("quit", self)
        if reply:
            await self.push(reply)
            self.transport.close()
            return
        await super().smtp_QUIT(arg)


class _TrackingController(Controller):
    def __init__(self, owner: "SmtpTestServer", *args, **kwargs):
        self._owner = owner
        super().__init__(*args, **kwargs)

    def factory(self):
        # factory() runs once per accepted TCP connection.
        self._owner.connections += 1
        return _TrackedSMTP(self._owner, self.handler, **self.SMTP_kwargs)


class SmtpTestServer:
    """aiosmtpd server on 127.0.0.1 with optional STARTTLS / implicit TLS / AUTH.

    Faults: inject(phase, reply=/drop=/delay=/times=) at any PHASES step,
    reject_rcpt (a set of addresses), reset_faults(). idle_timeout closes
    connections silent for that many seconds, as real servers do. smtputf8
    (default True) offers SMTPUTF8 in the EHLO; False leaves it out and refuses
    non-ASCII commands, as a server without RFC 6531 does. pipelining (default
    True) offers PIPELINING; chunking (default False) offers CHUNKING and takes BDAT.
    OAuth: oauth (an OAuthTestServer whose valid() decides XOAUTH2/OAUTHBEARER
    logins), oauth_scope (the scope a token must carry, also named in the
    refusal's JSON), oauth_refusal (the final 535; GOOGLE_REFUSAL or
    MICROSOFT_REFUSAL), auth_mechanisms (what the EHLO's AUTH line offers;
    default: LOGIN and PLAIN, plus XOAUTH2 and OAUTHBEARER with oauth).
    Observations: messages, dropped, connections, auth_attempts, auth_failures,
    auth_mechanisms_used, oauth_logins (presented_tokens),
    commands ((verb, argument) of every MAIL, RCPT, RSET and BDAT received),
    pipelined_groups (what arrived with each MAIL).
    """

    def __init__(
        self,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        auth: tuple[str, str] | None = None,
        certdir: Path | None = None,
        idle_timeout: float | None = None,
        cert_names: tuple[str, ...] = ("localhost", LOCALHOST),
        smtputf8: bool = True,
        pipelining: bool = True,
        chunking: bool = False,
        oauth: "OAuthTestServer | None" = None,
        auth_mechanisms: tuple[str, ...] | None = None,
        oauth_scope: str | None = None,
        oauth_refusal: str = GOOGLE_REFUSAL,
    ):
        if starttls and implicit_tls:
            raise ValueError("choose starttls or implicit_tls, not both")
        unknown = set(auth_mechanisms or ()) - set(PASSWORD_MECHANISMS + OAUTH_MECHANISMS)
        if unknown:
            raise ValueError(f"unknown AUTH mechanisms {sorted(unknown)}")
        if oauth is None and set(auth_mechanisms or ()) & set(OAUTH_MECHANISMS):
            raise ValueError("XOAUTH2/OAUTHBEARER need oauth=<OAuthTestServer> to check the tokens")
        self.host = LOCALHOST
        self.port = free_port()
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.idle_timeout = idle_timeout
        self.cert_names = cert_names
        self.smtputf8 = smtputf8
        self.pipelining = pipelining
        self.chunking = chunking
        self.oauth = oauth
        self.auth_mechanisms = auth_mechanisms
        self.oauth_scope = oauth_scope
        self.oauth_refusal = oauth_refusal
        self.ca_file: str | None = None
        self._server_ctx: ssl.SSLContext | None = None
        self._tmp_certdir: tempfile.TemporaryDirectory | None = None
        if starttls or implicit_tls:
            self._make_certificates(certdir)
        self._lock = threading.Condition()
        self._messages: list[Received] = []
        self._dropped: list[Received] = []
        self._commands: list[tuple[str, str]] = []
        self._groups: list[bytes] = []
        self._live: set[SMTP] = set()
        self._controller: Controller | None = None
        self.connections = 0
        self.auth_attempts = 0
        self.auth_failures = 0
        self.auth_mechanisms_used: list[str] = []
        self._oauth_logins: list[OAuthLogin] = []
        self.reset_faults()

    # -- setup

    def _make_certificates(self, certdir: Path | None) -> None:
        try:
            import trustme
        except ImportError as err:
            raise RuntimeError("TLS test server needs trustme: `pip install trustme`") from err
        if certdir is None:
            self._tmp_certdir = tempfile.TemporaryDirectory(prefix="herald-smtp-certs-")
            certdir = Path(self._tmp_certdir.name)
        certdir = Path(certdir)
        certdir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert(*self.cert_names)
        # Port in the names: several servers may share one certdir.
        self.ca_file = str(certdir / f"smtp-{self.port}-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        cert.private_key_and_cert_chain_pem.write_to_path(str(certdir / f"smtp-{self.port}-server.pem"))
        # Server side does not ask for client certs; aiosmtpd warns otherwise.
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._server_ctx)

    def client_context(self) -> ssl.SSLContext:
        """A verifying client SSLContext that trusts this server's CA."""
        if self.ca_file is None:
            raise RuntimeError("this SmtpTestServer has no TLS")
        return ssl.create_default_context(cafile=self.ca_file)

    def _controller_kwargs(self) -> dict:
        kwargs: dict = {
            "hostname": self.host,
            "port": self.port,
            # Avoids aiosmtpd's socket.getfqdn() DNS lookup on every connection.
            "server_hostname": "localhost",
            "ready_timeout": 5.0,
        }
        if self.idle_timeout:
            kwargs["timeout"] = self.idle_timeout  # aiosmtpd closes silent sessions after this
        # "250-SMTPUTF8" in the EHLO and UTF-8 commands accepted, or neither (aiosmtpd's Controller defaults to True).
        kwargs["enable_SMTPUTF8"] = self.smtputf8
        if self.starttls:
            kwargs.update(tls_context=self._server_ctx, require_starttls=False)
        if self.implicit_tls:
            # aiosmtpd 1.4.6 probes readiness through TLS itself (unverified
            # client context), so ssl_context works with Controller.start().
            kwargs["ssl_context"] = self._server_ctx
        if self.auth or self.oauth:
            # aiosmtpd only counts STARTTLS as TLS, so with implicit TLS (or no
            # TLS, for tests) AUTH must be allowed "without" TLS to be offered.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.starttls)
        offered = set(self._offered_mechanisms())
        kwargs["auth_exclude_mechanism"] = [m for m in PASSWORD_MECHANISMS + OAUTH_MECHANISMS if m not in offered]
        return kwargs

    def _offered_mechanisms(self) -> tuple[str, ...]:
        if self.auth_mechanisms is not None:
            return self.auth_mechanisms
        return PASSWORD_MECHANISMS + (OAUTH_MECHANISMS if self.oauth else ())

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self._count_attempt(mechanism)
        if self.auth is None:  # an OAuth-only server offered PLAIN/LOGIN by choice
            self.auth_failures += 1
            return AuthResult(success=False, handled=False)
        user, password = self.auth
        ok = auth_data.login == user.encode() and auth_data.password == password.encode()
        if not ok:
            self.auth_failures += 1
        # handled=False makes aiosmtpd send "535 5.7.8"; its default
        # (handled=True) sends nothing and the client hangs.
        return AuthResult(success=ok, handled=False)

    def _count_attempt(self, mechanism: str) -> None:
        with self._lock:
            self.auth_attempts += 1
            self.auth_mechanisms_used.append(mechanism)

    async def _oauth_login(self, session: SMTP, mechanism: str, args: list[str]) -> AuthResult:
        """An XOAUTH2 / OAUTHBEARER exchange: the token checked against the OAuth test server."""
        self._count_attempt(mechanism)
        response = await _initial_response(session, args)
        parsed = None
        if response is not None:
            parsed = (parse_xoauth2 if mechanism == "XOAUTH2" else parse_oauthbearer)(response)
            if parsed is None:
                await session.push(f"501 5.5.2 Malformed {mechanism} response")
        if parsed is None:
            self.auth_failures += 1
            return AuthResult(success=False, handled=True)
        user, token = parsed
        assert self.oauth is not None
        accepted = self.oauth.valid(token, user=user, scope=self.oauth_scope)
        with self._lock:
            self._oauth_logins.append(OAuthLogin(mechanism, user, token, accepted))
        if accepted:
            return AuthResult(success=True, auth_data=user)  # aiosmtpd answers 235 2.7.0
        self.auth_failures += 1
        return await self._refuse_token(session, mechanism)

    async def _refuse_token(self, session: SMTP, mechanism: str) -> AuthResult:
        # As Gmail and Exchange Online do: the error as a 334 challenge, the client's (empty) answer, a 535.
        status = "401" if mechanism == "XOAUTH2" else "invalid_token"
        scope = self.oauth_scope or "https://mail.google.com/"
        answer = await session.challenge_auth(json.dumps({"status": status, "schemes": "bearer", "scope": scope}))
        if answer is MISSING:  # "*" or bad base64: aiosmtpd has answered 501 already
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=self.oauth_refusal)

    # -- lifecycle

    def start(self) -> "SmtpTestServer":
        if self._controller is not None:
            raise RuntimeError(f"SMTP test server already running on port {self.port}")
        self._check_port_free()
        controller = _TrackingController(self, _FaultyHandler(self), **self._controller_kwargs())
        try:
            controller.start()
        except Exception as err:
            controller.stop(no_assert=True)
            raise RuntimeError(
                f"SMTP test server could not start on {self.host}:{self.port}: {err!r}"
            ) from err
        self._controller = controller
        self._wait_no_live_connections(1.0)  # the readiness probe's
        self.connections = 0  # start() made one readiness-probe connection
        return self

    def _wait_no_live_connections(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._live and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._live

    def _check_port_free(self) -> None:
        # A failed bind makes aiosmtpd's Controller.start() sit out its whole
        # ready_timeout before raising; checking first fails at once.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            try:
                sock.bind((self.host, self.port))
            except OSError as err:
                raise RuntimeError(
                    f"SMTP test server could not start on {self.host}:{self.port}: {err!r}"
                ) from err

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return
        try:
            # Hang up on clients first so their sockets are not left dangling.
            self._abort_all(controller, timeout=2.0)
        finally:
            controller.stop()
            self._live.clear()

    def is_running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> "SmtpTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults

    def reset_faults(self) -> None:
        with self._lock:
            self.reject_rcpt: set[str] = set()
            # What DATA gets when no recipient was accepted; None: aiosmtpd's 503. A broken server says 354.
            self.data_reply_without_recipients: str | None = None
            self._faults: list[Fault] = []
            self.fault_hits: dict[str, int] = {phase: 0 for phase in PHASES}  # faults applied, by phase

    def inject(self, phase: str, *, reply: str | None = None, drop: bool = False, delay: float = 0.0,
               times: int | None = None) -> None:
        """From now on, at `phase`: stall `delay` s, then hang up (`drop`) or answer `reply`.

        E.g. inject("rcpt", reply="451 4.3.0 try later", times=1): the next RCPT only.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}")
        with self._lock:
            self._faults.append(Fault(phase, reply, drop, delay, times))

    async def _apply_fault(self, phase: str, session, dropping: "Received | None" = None) -> str | None:
        fault = self._take_fault(phase)
        if fault is None:
            return None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            if dropping is not None:
                self._record(self._dropped, dropping)
            session.transport.abort()
            # Never reply: connection_lost() cancels this task (or stop() does).
            await asyncio.get_running_loop().create_future()
        return fault.reply

    def _take_fault(self, phase: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.phase == phase and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    self.fault_hits[phase] += 1
                    return fault
        return None

    def close_connections(self, timeout: float = 5.0) -> None:
        """Hang up on every open client connection from the server side (no reply)."""
        if self._controller is None:
            return
        if not self._abort_all(self._controller, timeout):
            raise AssertionError(f"{len(self._live)} SMTP connections still open after {timeout}s")

    def _abort_all(self, controller: Controller, timeout: float) -> bool:
        async def abort_all():
            for session in list(self._live):
                if session.transport is not None:
                    # abort(), not close(): a TLS close() waits for the idle
                    # client's close_notify, which never comes while it sleeps.
                    session.transport.abort()

        asyncio.run_coroutine_threadsafe(abort_all(), controller.loop).result(timeout)
        return self._wait_no_live_connections(timeout)

    @property
    def open_connections(self) -> int:
        return len(self._live)

    # -- observations

    def _record(self, target: list[Received], received: Received) -> None:
        with self._lock:
            target.append(received)
            self._lock.notify_all()

    @property
    def oauth_logins(self) -> list[OAuthLogin]:
        """Every XOAUTH2 / OAUTHBEARER login that carried a well-formed token, in order."""
        with self._lock:
            return list(self._oauth_logins)

    @property
    def presented_tokens(self) -> list[str]:
        """The bearer tokens presented, in order (check them with the OAuth server's valid())."""
        return [login.token for login in self.oauth_logins]

    @property
    def messages(self) -> list[Received]:
        """A snapshot of the mails accepted with 250 after DATA."""
        with self._lock:
            return list(self._messages)

    def _note(self, verb: str, arg: str | None) -> None:
        with self._lock:
            self._commands.append((verb, arg or ""))

    def _note_group(self, rest: bytes) -> None:
        with self._lock:
            self._groups.append(rest)

    @property
    def pipelined_groups(self) -> list[bytes]:
        """For every MAIL received: what had arrived with it, after it (b"" from a client that waited
        for the MAIL reply; b"RCPT TO:<...>\\r\\nDATA\\r\\n" from a pipelining one)."""
        with self._lock:
            return list(self._groups)

    @property
    def commands(self) -> list[tuple[str, str]]:
        """A snapshot of every MAIL, RCPT, RSET and BDAT received, e.g. ("MAIL", "FROM:<a@b.test> SMTPUTF8")."""
        with self._lock:
            return list(self._commands)

    @property
    def dropped(self) -> list[Received]:
        """Mails fully transmitted, then hung up on (inject("message", drop=True))."""
        with self._lock:
            return list(self._dropped)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= n, timeout):
                raise AssertionError(
                    f"expected at least {n} messages within {timeout}s, got {len(self._messages)}"
                )
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._dropped.clear()
            self._commands.clear()
            self._groups.clear()


async def _initial_response(session: SMTP, args: list[str]) -> bytes | None:
    """The client's decoded SASL response: sent with AUTH, or asked for with an empty 334. None: answered 501."""
    if len(args) == 1:
        answer = await session.challenge_auth("")
        return None if answer is MISSING else answer
    try:
        return base64.b64decode(args[1], validate=True)
    except binascii.Error:
        await session.push("501 5.5.2 Can't decode base64")
        return None
