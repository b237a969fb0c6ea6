"""A real OAuth 2.0 token endpoint on 127.0.0.1 for the OAuth tests (issue #22).

A werkzeug WSGI app served by werkzeug's threaded server in a thread. It issues
short-lived random bearer tokens (RFC 6749) for the client_credentials and the
refresh_token grants, and really expires them: valid() is what the SMTP test
server asks before it accepts an XOAUTH2 / OAUTHBEARER login. Clients
authenticate in the form body (client_secret_post) or with HTTP Basic
(client_secret_basic), as Entra ID and Google both accept.

Switches make it misbehave the way the real endpoints do: revoked clients,
rotating or revoked refresh tokens, OAuth error answers with Entra-like
descriptions, 5xx pages, stalls, and every access token revoked at once.
Secrets and tokens are never in a repr or a log line.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .net import LOCALHOST

# What the real endpoints say, so classification and hints can be tested on real text.
DESCRIPTIONS = {
    "invalid_client": (
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app '{client_id}'. "
        "Trace ID: 0f6c3c1a-4b1e-4d8e-9a57-7b1c2d3e4f50 Correlation ID: 5a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d "
        "Timestamp: 2026-01-12 09:14:03Z"
    ),
    "unknown_client": (
        "AADSTS700016: Application with identifier '{client_id}' was not found in the directory 'Contoso'. "
        "This can happen if the application has not been installed by the administrator of the tenant or "
        "consented to by any user in the tenant. You may have sent your authentication request to the wrong "
        "tenant. Trace ID: 1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9"
    ),
    "disabled_client": (
        "AADSTS7000112: Application '{client_id}' is disabled. Trace ID: 2c3d4e5f-6071-4829-93a4-b5c6d7e8f9a0"
    ),
    "unauthorized_client": (
        "AADSTS700027: The client is not authorized to use the requested grant type. "
        "Trace ID: 3d4e5f60-7182-493a-a4b5-c6d7e8f9a0b1"
    ),
    "invalid_grant": "Token has been expired or revoked.",
    "invalid_scope": (
        "AADSTS70011: The provided request must include a 'scope' input parameter. The provided value for the "
        "input parameter 'scope' is not valid. The scope {scope} is not valid. "
        "Trace ID: 4e5f6071-8293-4a4b-b5c6-d7e8f9a0b1c2"
    ),
    "invalid_request": "AADSTS900144: The request body must contain the following parameter: '{missing}'.",
    "unsupported_grant_type": "AADSTS70003: The app requested an unsupported grant type '{grant_type}'.",
}

SERVER_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
    "<body><h2>Service Unavailable</h2><p>The service is temporarily unavailable.</p></body></html>"
)


@dataclass
class Client:
    client_id: str
    secret: str | None = field(repr=False)  # None: a public client (refresh_token grant with client_id only)
    scopes: frozenset[str]
    mailboxes: frozenset[str] | None  # whom its app tokens may send as; None: any mailbox
    revoked: bool = False


@dataclass
class RefreshGrant:
    client_id: str
    user: str
    scopes: frozenset[str]
    revoked: bool = False


@dataclass
class AccessToken:
    client_id: str
    user: str | None  # None: an app token (client_credentials)
    mailboxes: frozenset[str] | None  # what an app token may act for; None: any
    scopes: frozenset[str]
    expires_at: float
    generation: int  # expire_all() moves the server's generation on


@dataclass
class _Switch:
    """A stall or a forced answer for the next `times` token requests."""

    times: int
    status: int = 0  # 0: no forced answer (a delay)
    body: str = ""
    content_type: str = "application/json"
    delay: float = 0.0


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # the tests print their own lines
        pass


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(error)
        self.error, self.description, self.status = error, description, status


def _describe(kind: str, **values: str) -> str:
    return DESCRIPTIONS[kind].format_map({"client_id": "", "scope": "", "missing": "", "grant_type": "", **values})


def _scope_set(text: str | None) -> frozenset[str]:
    return frozenset((text or "").split())


class OAuthTestServer:
    """OAuth 2.0 token endpoint on 127.0.0.1; a context manager (start()/stop()).

    Setup: register_client(), issue_refresh_token(). Switches: rotate_refresh_tokens, token_lifetime,
    revoke_client(), revoke_refresh_token(), fail(), fail_status(), delay(), expire_all(), reset().
    Observations: token_url, fetches, requests, client_auth, tokens_issued, valid().
    """

    def __init__(self, token_lifetime: float = 5.0, *, clock: Callable[[], float] = time.monotonic):
        self.token_lifetime = token_lifetime
        self.rotate_refresh_tokens = False
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._clients: dict[str, Client] = {}
        self._refresh: dict[str, RefreshGrant] = {}
        self._tokens: dict[str, AccessToken] = {}
        self._generation = 0
        self._delays: list[_Switch] = []
        self._answers: list[_Switch] = []
        self._requests: list[tuple[str, str]] = []
        self._client_auth: list[str] = []
        self.fetches = 0
        self._server = make_server(LOCALHOST, 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<OAuthTestServer {self.token_url} fetches={self.fetches}>"

    @property
    def token_url(self) -> str:
        return f"http://{LOCALHOST}:{self._server.server_port}/oauth2/v2.0/token"

    # -- lifecycle

    def start(self) -> "OAuthTestServer":
        if self._thread is not None:
            raise RuntimeError(f"OAuth test server already running at {self.token_url}")
        # A short poll interval: shutdown() waits for the serve loop to notice, up to one interval.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="oauth-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stopping.set()  # cuts short any delay() stall
        if thread is not None:
            self._server.shutdown()
            thread.join(5.0)
        self._server.server_close()

    def __enter__(self) -> "OAuthTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- setup

    def register_client(self, client_id: str, secret: str | None, scopes: Iterable[str] | str,
                        mailboxes: Iterable[str] | None = None) -> None:
        """A client allowed `scopes` (an iterable or a space-separated string). mailboxes limits whom its
        client_credentials tokens may send as (Exchange's per-mailbox permission); None: anyone."""
        scope_set = _scope_set(scopes) if isinstance(scopes, str) else frozenset(scopes)
        boxes = None if mailboxes is None else frozenset(m.lower() for m in mailboxes)
        with self._lock:
            self._clients[client_id] = Client(client_id, secret, scope_set, boxes)

    def issue_refresh_token(self, client_id: str, user: str, scopes: Iterable[str] | None = None) -> str:
        """A refresh token for `user` via `client_id`, for the client's scopes unless given."""
        with self._lock:
            client = self._clients[client_id]
            return self._new_refresh_token(client_id, user, client.scopes if scopes is None else frozenset(scopes))

    def _new_refresh_token(self, client_id: str, user: str, scopes: frozenset[str]) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        self._refresh[token] = RefreshGrant(client_id, user, scopes)
        return token

    # -- switches

    def revoke_client(self, client_id: str) -> None:
        """The client's next requests get invalid_client (the app was disabled); issued tokens stay valid."""
        with self._lock:
            self._clients[client_id].revoked = True

    def revoke_refresh_token(self, token: str) -> None:
        with self._lock:
            self._refresh[token].revoked = True

    def expire_all(self) -> None:
        """Every access token issued so far is invalid at once, as after a revocation."""
        with self._lock:
            self._generation += 1

    def fail(self, error: str, description: str = "", status: int | None = None, times: int = 1) -> None:
        """The next `times` token requests get {"error": error, "error_description": ...}.

        The description defaults to a real one for the error; status to 401 for invalid_client, else 400.
        """
        if status is None:
            status = 401 if error == "invalid_client" else 400
        if not description and error in DESCRIPTIONS:
            description = _describe(error, client_id="00000000-0000-0000-0000-000000000000",
                                    scope="https://outlook.office365.com/.default")
        body = json.dumps({"error": error, "error_description": description})
        self._add(self._answers, _Switch(times, status, body))

    def fail_status(self, status: int = 503, times: int = 1, html: bool = True) -> None:
        """The next `times` token requests get `status` with an HTML page (or, html=False, an empty body)."""
        page, content_type = (SERVER_ERROR_PAGE, "text/html") if html else ("", "text/plain")
        self._add(self._answers, _Switch(times, status, page, content_type))

    def delay(self, seconds: float, times: int = 1) -> None:
        """The next `times` token requests stall `seconds` before they are answered (as usual, or as a
        pending fail()/fail_status() says)."""
        self._add(self._delays, _Switch(times, delay=seconds))

    def _add(self, queue: list[_Switch], switch: _Switch) -> None:
        with self._lock:
            queue.append(switch)

    def reset(self) -> None:
        """Drops pending fail/fail_status/delay switches."""
        with self._lock:
            self._delays.clear()
            self._answers.clear()

    # -- observations

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(grant_type, client_id) of every token request, in order ("" where absent)."""
        with self._lock:
            return list(self._requests)

    @property
    def client_auth(self) -> list[str]:
        """How each request authenticated: "client_secret_basic", "client_secret_post" or "none"."""
        with self._lock:
            return list(self._client_auth)

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return len(self._tokens)

    def valid(self, token: str, user: str | None = None, scope: str | None = None) -> bool:
        """Issued here, not expired, not revoked; and, when given, good for `user` and every scope in `scope`."""
        with self._lock:
            issued = self._tokens.get(token)
            if issued is None or issued.generation != self._generation or self._clock() >= issued.expires_at:
                return False
        if user is not None and not _acts_for(issued, user):
            return False
        return _scope_set(scope) <= issued.scopes

    # -- the endpoint

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        if request.method != "POST" or request.path != "/oauth2/v2.0/token":
            return Response("not found", 404)(environ, start_response)
        return self._token_response(request)(environ, start_response)

    def _token_response(self, request: Request) -> Response:
        form = request.form
        delay, answer = self._note_request(form.get("grant_type", ""), form.get("client_id", "") or _basic_id(request))
        if delay is not None:
            self._stopping.wait(delay.delay)
        if answer is not None:
            return Response(answer.body, answer.status, content_type=answer.content_type)
        try:
            body = self._grant(request)
        except OAuthError as err:
            body = {"error": err.error, "error_description": err.description}
            return _json(body, err.status)
        return _json(body, 200)

    def _note_request(self, grant_type: str, client_id: str) -> tuple[_Switch | None, _Switch | None]:
        """Counts the request; the delay and the forced answer it meets, if any."""
        with self._lock:
            self.fetches += 1
            self._requests.append((grant_type, client_id))
            return _take(self._delays), _take(self._answers)

    def _grant(self, request: Request) -> dict:
        grant_type = request.form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", _describe("invalid_request", missing="grant_type"))
        with self._lock:
            client = self._authenticate(request, grant_type)
            if grant_type == "client_credentials":
                return self._client_credentials(client, request.form.get("scope"))
            if grant_type == "refresh_token":
                return self._refresh_token(client, request.form.get("refresh_token"), request.form.get("scope"))
        raise OAuthError("unsupported_grant_type", _describe("unsupported_grant_type", grant_type=grant_type))

    def _authenticate(self, request: Request, grant_type: str) -> Client:
        """The calling client, checked (under the lock). Basic auth or the form, not both (RFC 6749 2.3)."""
        basic = request.authorization if request.authorization and request.authorization.type == "basic" else None
        form_secret = request.form.get("client_secret")
        if basic is not None and form_secret is not None:
            raise OAuthError("invalid_request", "More than one client authentication method was used.")
        secret: str | None
        if basic is not None:
            # RFC 6749 2.3.1: id and secret are form-encoded before they go into the Basic header.
            client_id, secret = unquote_plus(basic.username or ""), unquote_plus(basic.password or "")
            method = "client_secret_basic"
        else:
            client_id, secret = request.form.get("client_id", ""), form_secret
            method = "client_secret_post" if form_secret is not None else "none"
        self._client_auth.append(method)
        if not client_id:
            raise OAuthError("invalid_request", _describe("invalid_request", missing="client_id"))
        client = self._clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", _describe("unknown_client", client_id=client_id), 401)
        if client.revoked:
            raise OAuthError("invalid_client", _describe("disabled_client", client_id=client_id), 401)
        if client.secret is None and grant_type == "client_credentials":
            raise OAuthError("unauthorized_client", _describe("unauthorized_client"))
        if client.secret is not None and not secrets.compare_digest(secret or "", client.secret):
            raise OAuthError("invalid_client", _describe("invalid_client", client_id=client_id), 401)
        return client

    def _client_credentials(self, client: Client, scope: str | None) -> dict:
        scopes = _scope_set(scope) or client.scopes
        if not scopes <= client.scopes:
            raise OAuthError("invalid_scope", _describe("invalid_scope", scope=" ".join(sorted(scopes))))
        return self._issue(client.client_id, None, client.mailboxes, scopes)

    def _refresh_token(self, client: Client, refresh_token: str | None, scope: str | None) -> dict:
        if not refresh_token:
            raise OAuthError("invalid_request", _describe("invalid_request", missing="refresh_token"))
        grant = self._refresh.get(refresh_token)
        if grant is None or grant.revoked or grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", _describe("invalid_grant"))
        scopes = _scope_set(scope) or grant.scopes
        if not scopes <= grant.scopes:
            raise OAuthError("invalid_scope", _describe("invalid_scope", scope=" ".join(sorted(scopes))))
        body = self._issue(client.client_id, grant.user, None, scopes)
        if self.rotate_refresh_tokens:
            grant.revoked = True  # the old one stops working once the new one is out
            body["refresh_token"] = self._new_refresh_token(client.client_id, grant.user, grant.scopes)
        return body

    def _issue(self, client_id: str, user: str | None, mailboxes: frozenset[str] | None,
               scopes: frozenset[str]) -> dict:
        token = "at-" + secrets.token_urlsafe(32)
        expires_at = self._clock() + self.token_lifetime
        self._tokens[token] = AccessToken(client_id, user, mailboxes, scopes, expires_at, self._generation)
        return {"access_token": token, "token_type": "Bearer", "expires_in": math.ceil(self.token_lifetime),
                "scope": " ".join(sorted(scopes))}


def _take(queue: list[_Switch]) -> _Switch | None:
    for switch in queue:
        if switch.times > 0:
            switch.times -= 1
            return switch
    return None


def _acts_for(token: AccessToken, user: str) -> bool:
    if token.user is not None:
        return token.user.lower() == user.lower()
    return token.mailboxes is None or user.lower() in token.mailboxes


def _basic_id(request: Request) -> str:
    auth = request.authorization
    return unquote_plus(auth.username or "") if auth is not None and auth.type == "basic" else ""


def _json(body: dict, status: int) -> Response:
    # RFC 6749 5.1: token answers must not be cached.
    return Response(json.dumps(body), status, content_type="application/json",
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
