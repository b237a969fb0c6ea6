"""OAuth 2.0 for SMTP AUTH: the OAuthClient a relay logs in with, the provider presets, the AUTH mechanism
setting, and the parsers of the SMTP_OAUTH_* values.

A relay with an OAuthClient logs in with XOAUTH2 or OAUTHBEARER and a bearer token that
herald_smtp/smtp/tokens.py fetches from the token endpoint (the client_credentials grant, or the
refresh_token grant when a refresh token is set) instead of a password. The presets fill in what
Microsoft 365 and Google need; an explicit token URL or scope overrides them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit


class AuthMechanism(StrEnum):
    """SMTP_AUTH_MECHANISM: auto picks XOAUTH2 or OAUTHBEARER for OAuth, PLAIN or LOGIN for a password."""

    AUTO = "auto"
    XOAUTH2 = "xoauth2"
    OAUTHBEARER = "oauthbearer"
    PLAIN = "plain"
    LOGIN = "login"


OAUTH_MECHANISMS = (AuthMechanism.XOAUTH2, AuthMechanism.OAUTHBEARER)
PASSWORD_MECHANISMS = (AuthMechanism.PLAIN, AuthMechanism.LOGIN)

CLIENT_CREDENTIALS, REFRESH_TOKEN = "client_credentials", "refresh_token"


@dataclass(frozen=True)
class Preset:
    token_url: str  # {tenant} is SMTP_OAUTH_TENANT
    scope: str
    needs_tenant: bool = False
    needs_refresh_token: bool = False


PRESETS = {
    # Exchange Online, app-only: the client_credentials grant, the SMTP.SendAsApp application permission.
    "microsoft": Preset("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
                        "https://outlook.office365.com/.default", needs_tenant=True),
    # Gmail and Google Workspace: a user's consent, kept as a refresh token.
    "google": Preset("https://oauth2.googleapis.com/token", "https://mail.google.com/", needs_refresh_token=True),
}


@dataclass(frozen=True)
class OAuthClient:
    """Where and how a relay gets its bearer tokens. The secrets stay out of repr()."""

    token_url: str
    client_id: str
    scope: str = ""
    client_secret: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)

    @property
    def grant(self) -> str:
        return REFRESH_TOKEN if self.refresh_token else CLIENT_CREDENTIALS

    @property
    def token_host(self) -> str:
        return urlsplit(self.token_url).hostname or ""

    def redacted(self) -> dict:
        """For the startup line: the grant, token host, client id and scope; the secrets as set/unset."""
        return {"grant": self.grant, "token_host": self.token_host, "client_id": self.client_id,
                "scope": self.scope, "client_secret": "set" if self.client_secret else "unset",
                "refresh_token": "set" if self.refresh_token else "unset"}


def oauth_client(*, token_url: str, client_id: str, client_secret: str, scope: str, refresh_token: str,
                 provider: str, tenant: str) -> OAuthClient:
    """The OAuthClient these values name; ValueError("VARIABLE: expected ...") naming the first wrong one.

    The variable names are SMTP_OAUTH_*'s: a fallback URL's parser renames them for its own parameters.
    """
    preset = PRESETS.get(provider)
    if preset is not None:
        if preset.needs_tenant and not tenant and not token_url:
            raise ValueError(f"SMTP_OAUTH_TENANT: expected the tenant (its ID or a domain such as contoso.com) "
                             f"with SMTP_OAUTH_PROVIDER={provider}")
        token_url = token_url or preset.token_url.format(tenant=tenant)
        scope = scope or preset.scope
        if preset.needs_refresh_token and not refresh_token:
            raise ValueError(f"SMTP_OAUTH_REFRESH_TOKEN: expected the refresh token of the mailbox's consent with "
                             f"SMTP_OAUTH_PROVIDER={provider}")
    if not token_url:
        raise ValueError("SMTP_OAUTH_TOKEN_URL: expected the OAuth 2.0 token endpoint (or SMTP_OAUTH_PROVIDER) "
                         "when an SMTP_OAUTH_* variable is set")
    if not client_id:
        raise ValueError("SMTP_OAUTH_CLIENT_ID: expected the application (client) ID with OAuth")
    if not client_secret and not refresh_token:
        raise ValueError("SMTP_OAUTH_CLIENT_SECRET: expected the client secret for the client_credentials grant "
                         "(or SMTP_OAUTH_REFRESH_TOKEN for the refresh_token grant)")
    return OAuthClient(token_url, client_id, scope, client_secret, refresh_token)


def token_url(raw: str) -> str:
    """An https:// token endpoint; http:// only to this machine (a plain-text endpoint would carry the secret)."""
    value = raw.strip()
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
    except ValueError:
        raise ValueError("an https:// URL of the OAuth 2.0 token endpoint") from None
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and _is_loopback(host):
        return value
    raise ValueError("an https:// URL of the OAuth 2.0 token endpoint (http:// only to localhost)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def scope(raw: str) -> str:
    """Space-separated scopes, printable ASCII."""
    value = " ".join(raw.split())
    if not re.fullmatch(r"[!#-\[\]-~]+( [!#-\[\]-~]+)*", value):  # RFC 6749 3.3 scope-token characters
        raise ValueError("space-separated scopes such as https://outlook.office365.com/.default")
    return value


def tenant(raw: str) -> str:
    """Entra ID's tenant: its ID (a GUID), a verified domain, or organizations/common."""
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", value):
        raise ValueError("the tenant ID (a GUID) or a domain such as contoso.onmicrosoft.com")
    return value


def credential(raw: str) -> str:
    """A client secret or refresh token, as given (surrounding blanks dropped): printable ASCII only, since it
    travels in a form body; the message never quotes it."""
    value = raw.strip()
    if not (value.isascii() and value.isprintable()):
        raise ValueError("printable ASCII characters only")
    return value
