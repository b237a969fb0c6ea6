"""SMTP_FALLBACK_URLS: the grammar of the fallback relays' URLs, each parsed into a Relay.

An error names the entry's position and the reason, never the entry: it may hold a password.

OAuth: any oauth_* query parameter makes the relay log in with a bearer token. The URL's user is the
mailbox and its password the client secret; the other SMTP_OAUTH_* values are the parameters
oauth_provider, oauth_tenant, oauth_token_url, oauth_client_id, oauth_scope and oauth_refresh_token
(config/oauth.py), and `auth` is SMTP_AUTH_MECHANISM:
    smtp://noreply%40contoso.com:SECRET@smtp.office365.com?oauth_provider=microsoft&oauth_tenant=contoso.com
        &oauth_client_id=0f1e...
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from . import oauth, parsers
from .oauth import OAUTH_MECHANISMS, PASSWORD_MECHANISMS, AuthMechanism, OAuthClient
from .settings import Relay, TlsMode

# No word here may be a likely password fragment: tests/test_config_secrets.py checks "def" (of "default") too.
_RELAY_FORM = ("smtp://[user[:password]@]host[:port] (STARTTLS, port 587 if none is given), "
               "smtps://[user[:password]@]host[:port] (implicit TLS, port 465 if none is given) or "
               "smtp+plain://host[:port] (no TLS, no credentials), user and password percent-encoded, optional "
               "query parameters from, from_name, tls_verify, ca_file, auth and the oauth_ ones (the password is "
               "then the OAuth client's); entries separated by commas")
_RELAY_SCHEMES = {"smtp": (TlsMode.STARTTLS, 587), "smtps": (TlsMode.IMPLICIT, 465), "smtp+plain": (TlsMode.PLAIN, 25)}
_OAUTH_PARAMETERS = ("oauth_provider", "oauth_tenant", "oauth_token_url", "oauth_client_id", "oauth_scope",
                     "oauth_refresh_token")
_RELAY_PARAMETERS = ("from", "from_name", "tls_verify", "ca_file", "auth") + _OAUTH_PARAMETERS


def relay_urls(raw: str) -> tuple[Relay, ...]:
    """SMTP_FALLBACK_URLS: the relays tried in order after the primary."""
    relays = []
    for position, entry in enumerate(raw.split(","), start=1):
        try:
            relays.append(_relay_url(entry.strip()))
        except ValueError as exc:
            # The reason, never the entry: it may hold a password.
            raise ValueError(f"entry {position} (counting from 1) to be {_RELAY_FORM} ({exc})") from None
    return tuple(relays)


def _relay_url(entry: str) -> Relay:
    if not entry:
        raise ValueError("it is empty")
    try:
        parts = urlsplit(entry)
        given_port = parts.port  # ValueError for a port out of range or not a number
    except ValueError:
        # urllib's message may quote the netloc, password and all.
        raise ValueError("not a URL of that form: check the host and port, and percent-encode ? & # / @ in the "
                         "user and password") from None
    if parts.scheme not in _RELAY_SCHEMES:
        raise ValueError("the scheme must be smtp, smtps or smtp+plain")
    tls, default_port = _RELAY_SCHEMES[parts.scheme]
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("a relay URL has no path")
    host = parsers.host(parts.hostname or "")
    port = parsers.port_number(str(given_port)) if given_port is not None else default_port
    user = parsers.ascii_only(parsers.text)(unquote(parts.username or ""))
    password = unquote(parts.password or "")
    if not password.isascii():
        raise ValueError("the password must be ASCII (smtplib's AUTH cannot send others)")
    if password and not user:
        raise ValueError("a password needs a user")
    if tls == TlsMode.PLAIN and user:
        raise ValueError("smtp+plain takes no credentials: they would travel in clear text (use smtp:// or smtps://)")
    given = _query(parts.query)
    client = _oauth(given, user, password)
    mechanism = _mechanism(given.get("auth", ""), client)
    if client is not None:
        password = ""  # it was the client secret
    return Relay(host, port, tls, user, password, oauth=client, mechanism=mechanism, **_relay_parameters(given))


def _query(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("a malformed query") from None
    names = [name for name, _ in pairs]
    unknown = sorted(set(names) - set(_RELAY_PARAMETERS))
    if unknown or len(names) != len(set(names)):
        raise ValueError(f"query parameters may be {', '.join(_RELAY_PARAMETERS)}, each once")
    return dict(pairs)


def _oauth(given: dict[str, str], user: str, password: str) -> OAuthClient | None:
    if not any(name in given for name in _OAUTH_PARAMETERS):
        return None
    if not user:
        raise ValueError("OAuth needs the mailbox as the URL's user")
    try:
        return oauth.oauth_client(
            token_url=oauth.token_url(given["oauth_token_url"]) if "oauth_token_url" in given else "",
            client_id=oauth.credential(given.get("oauth_client_id", "")),
            client_secret=oauth.credential(password),
            scope=oauth.scope(given["oauth_scope"]) if "oauth_scope" in given else "",
            refresh_token=oauth.credential(given.get("oauth_refresh_token", "")),
            provider=parsers.choice("", *oauth.PRESETS)(given.get("oauth_provider", "")),
            tenant=oauth.tenant(given["oauth_tenant"]) if "oauth_tenant" in given else "")
    except ValueError as exc:
        raise ValueError(_in_url_words(str(exc))) from None


def _in_url_words(message: str) -> str:
    """oauth_client() names SMTP_OAUTH_* variables; in a URL they are parameters, and the client's secret its
    password. (No "secret" in what it says: tests/test_config_secrets.py looks for password fragments.)"""
    if message.startswith("SMTP_OAUTH_CLIENT_SECRET"):
        return ("OAuth: the password: expected the OAuth client's, for the client_credentials grant (or "
                "oauth_refresh_token for the refresh_token grant)")
    for name in ("PROVIDER", "TENANT", "TOKEN_URL", "CLIENT_ID", "SCOPE", "REFRESH_TOKEN"):
        message = message.replace(f"SMTP_OAUTH_{name}", f"oauth_{name.lower()}")
    return f"OAuth: {message}"


def _mechanism(raw: str, client: OAuthClient | None) -> AuthMechanism:
    mechanism = AuthMechanism(parsers.choice(*AuthMechanism)(raw)) if raw else AuthMechanism.AUTO
    if client is not None and mechanism in PASSWORD_MECHANISMS:
        raise ValueError(f"auth: xoauth2, oauthbearer or auto with OAuth, not {mechanism}")
    if client is None and mechanism in OAUTH_MECHANISMS:
        raise ValueError(f"auth: plain, login or auto without the oauth_ parameters, not {mechanism}")
    return mechanism


def _relay_parameters(given: dict[str, str]) -> dict:
    ca_file = given["ca_file"].strip() if "ca_file" in given else None
    if ca_file:
        try:
            parsers.check_ca_file(ca_file)
        except ValueError as exc:
            raise ValueError(f"ca_file: {exc}") from None
    return {"from_address": _relay_from(given.get("from", "")),
            "from_name": parsers.display_name(given.get("from_name", "")),
            "tls_verify": parsers.boolean(given["tls_verify"]) if "tls_verify" in given else None,
            "ca_file": ca_file}


def _relay_from(raw: str) -> str:
    try:
        return parsers.address(raw)
    except ValueError:
        # Not the validator's reason, which quotes the characters it refuses: with an unencoded ? in the
        # password, `from=` may hold password text.
        raise ValueError("from: an ASCII email address like noreply@example.com") from None

