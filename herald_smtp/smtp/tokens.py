"""OAuth 2.0 bearer tokens for SMTP AUTH: fetched with Authlib, one per relay per process, renewed ahead of expiry.

    TokenSource.get(deadline) -> AccessToken    a token good for a new connection's AUTH
    TokenSource.get(deadline, refused=token)    the server refused `token`: fetch another

One token per relay and process, shared by its threads: one fetch at a time, the others wait for
it. A token is renewed once less than a tenth of its lifetime (at most 5 minutes) is left; while
one thread renews it, the others go on with the current one, so a request waits only for the
first token, or after a token expired unused. A fetch counts against the request's deadline.

Failures are TokenError: `setup` when the token endpoint refused our client or grant
(invalid_client, unauthorized_client, invalid_grant, invalid_scope, ...: a fix in the
configuration is needed), else unavailable (unreachable, timed out, 5xx, not JSON). Their text
names the OAuth error and the endpoint's description, never the client secret, the refresh token
or an access token: those are bearer credentials.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from .. import tracing
from ..config.oauth import OAuthClient
from ..metrics import Metrics
from .provider_replies import hint_for

log = logging.getLogger("herald_smtp.oauth")

# Renew once less than this share of the lifetime is left, but never earlier than this many seconds before expiry.
_RENEW_SHARE = 0.1
_RENEW_AT_MOST_SECONDS = 300.0
# A token endpoint that names no lifetime: assume an hour, as Entra ID and Google issue.
_DEFAULT_LIFETIME_SECONDS = 3600.0
# Description text kept in an error message (Entra's are long).
_DESCRIPTION_CHARS = 300


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    fetched_at: float  # the source's clock
    expires_at: float

    @property
    def renew_at(self) -> float:
        lifetime = self.expires_at - self.fetched_at
        return self.expires_at - min(lifetime * _RENEW_SHARE, _RENEW_AT_MOST_SECONDS)

    def valid(self, now: float) -> bool:
        return now < self.expires_at


class TokenError(Exception):
    """The token endpoint gave no token. `setup`: it refused the client or grant (fix the configuration)."""

    def __init__(self, detail: str, setup: bool, oauth_error: str = ""):
        super().__init__(detail)
        self.detail = detail
        self.setup = setup
        self.oauth_error = oauth_error  # the OAuth error code (invalid_client ...), "" when there was none


class TokenSource:
    """The tokens of one relay in this process."""

    def __init__(self, client: OAuthClient, relay: str, metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[OAuthClient, str, float], dict] | None = None):
        self.client = client
        self.relay = relay
        self.metrics = metrics
        self._clock = clock
        self._fetch = fetch or fetch_token
        self._refresh_token = client.refresh_token  # replaced when the endpoint rotates it
        self._token: AccessToken | None = None
        self._fetching = False
        self._changed = threading.Condition()

    def get(self, deadline: float, refused: AccessToken | None = None) -> AccessToken:
        """A token for a new AUTH, within `deadline` (time.monotonic); TokenError if none can be had."""
        with self._changed:
            while True:
                current = self._usable(refused)
                if current is not None and (self._clock() < current.renew_at or self._fetching):
                    return self._used(current)  # fresh, or due and being renewed by another thread
                if not self._fetching:
                    break
                left = deadline - time.monotonic()  # none usable: wait for the thread that fetches
                if left <= 0:
                    raise TokenError("timed out waiting for the OAuth token endpoint", setup=False)
                self._changed.wait(left)
            self._fetching = True
        try:
            token = self._fetch_new(deadline)
        except TokenError:
            self._done(None)
            if current is not None:  # the renewal failed, but the current token is still good
                log.warning("oauth token renewal failed; using the current token until it expires",
                            extra={"relay": self.relay})
                return self._used(current)
            raise
        self._done(token)
        return self._used(token)

    def _usable(self, refused: AccessToken | None) -> AccessToken | None:
        token = self._token
        if token is None or token is refused or not token.valid(self._clock()):
            return None
        return token

    def _done(self, token: AccessToken | None) -> None:
        with self._changed:
            if token is not None:
                self._token = token
            self._fetching = False
            self._changed.notify_all()

    def _used(self, token: AccessToken) -> AccessToken:
        self.metrics.token_age.labels(self.relay).observe(max(0.0, self._clock() - token.fetched_at))
        return token

    def _fetch_new(self, deadline: float) -> AccessToken:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TokenError("timed out: no time left to fetch an OAuth token", setup=False)
        client = replace(self.client, refresh_token=self._refresh_token)  # rotated, or as configured
        try:
            with tracing.span("oauth.token", self._span_attributes(client)):
                try:
                    answer = self._fetch(client, self.relay, left)
                except TokenError as error:
                    tracing.fail(error.detail)
                    raise
        except TokenError as error:
            self.metrics.token_fetches.labels(self.relay, "refused" if error.setup else "unavailable").inc()
            log.error("oauth token fetch failed", extra={"relay": self.relay, "token_host": client.token_host,
                                                          "grant": client.grant, "errmsg": error.detail})
            raise
        self.metrics.token_fetches.labels(self.relay, "ok").inc()
        rotated = answer.get("refresh_token")
        if rotated and self._refresh_token and rotated != self._refresh_token:
            self._refresh_token = rotated
            log.info("oauth refresh token rotated by the token endpoint; using the new one in this process",
                     extra={"relay": self.relay, "token_host": client.token_host})
        now = self._clock()
        lifetime = _lifetime(answer.get("expires_in"))
        log.info("oauth token fetched", extra={"relay": self.relay, "token_host": client.token_host,
                                               "grant": client.grant, "expires_in": lifetime})
        return AccessToken(str(answer["access_token"]), now, now + lifetime)


    def _span_attributes(self, client: OAuthClient) -> dict | None:
        """What the token fetch's span carries: the relay, grant and token host, never a secret."""
        if not tracing.active():
            return None
        return {"herald.smtp.relay": self.relay, "herald.oauth.grant": client.grant,
                "herald.oauth.token_host": client.token_host}


def _lifetime(expires_in: object) -> float:
    try:
        seconds = float(str(expires_in))
    except ValueError:
        return _DEFAULT_LIFETIME_SECONDS
    return seconds if seconds > 0 else _DEFAULT_LIFETIME_SECONDS


def fetch_token(client: OAuthClient, relay: str, timeout: float) -> dict:
    """One request to the token endpoint (Authlib), within `timeout` seconds; the endpoint's JSON answer."""
    # Imported here: a worker whose relays log in with a password (most) never loads Authlib and requests.
    import requests
    from authlib.integrations.requests_client import OAuth2Session, OAuthError

    session = OAuth2Session(client.client_id, client.client_secret or None, scope=client.scope or None,
                            token_endpoint_auth_method="client_secret_post")
    try:
        with session:
            if client.refresh_token:
                answer = session.refresh_token(client.token_url, refresh_token=client.refresh_token, timeout=timeout)
            else:
                answer = session.fetch_token(client.token_url, grant_type="client_credentials", timeout=timeout)
    except OAuthError as error:
        description = " ".join(str(error.description or "").split())[:_DESCRIPTION_CHARS]
        detail = f"the token endpoint {client.token_host} refused the {client.grant} grant: {error.error}"
        if description:
            detail += f" ({description})"
        hint = hint_for(f"{error.error}: {description}")  # Entra's AADSTS codes, Google's invalid_grant
        if hint:
            detail += f"; {hint}"
        raise TokenError(detail, setup=True, oauth_error=str(error.error)) from None
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise TokenError(f"the token endpoint {client.token_host} answered HTTP {status}", setup=False) from None
    except requests.Timeout:
        raise TokenError(f"the token endpoint {client.token_host} timed out", setup=False) from None
    except (requests.RequestException, ValueError) as error:
        # The class only: requests' texts can quote the URL, Authlib's the answer.
        raise TokenError(f"the token endpoint {client.token_host} failed: {type(error).__name__}",
                         setup=False) from None
    if not answer.get("access_token"):
        raise TokenError(f"the token endpoint {client.token_host} answered without an access_token", setup=False)
    return dict(answer)
