"""BOUNCE_IMAP_URL: the IMAP mailbox that delivery status notifications land in, read by `herald-smtp bounces`.

    imaps://user:password@imap.example.com[:993]/INBOX   TLS from the first byte
    imap://user:password@imap.example.com[:143]/INBOX    STARTTLS, required

User and password are percent-decoded (a password with @ or / is written %40, %2F); the folder defaults to
INBOX. A malformed value is refused in one line that never quotes the URL, which holds the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..network import host_port

_FORM = ("imaps://user:password@host[:port]/FOLDER (TLS) or imap://user:password@host[:port]/FOLDER "
         "(STARTTLS); user and password percent-encoded")
_DEFAULT_PORTS = {"imaps": 993, "imap": 143}


@dataclass(frozen=True)
class BounceMailbox:
    host: str
    port: int
    implicit_tls: bool  # imaps://; imap:// requires STARTTLS
    user: str
    password: str = field(repr=False)
    folder: str = "INBOX"

    @property
    def where(self) -> str:
        """user@host:port/folder: what the logs and the doctor name, never the password."""
        return f"{self.user}@{host_port(self.host, self.port)}/{self.folder}"

    def redacted(self) -> str:
        return f"{'imaps' if self.implicit_tls else 'imap'}://{self.user}:***@{host_port(self.host, self.port)}" \
               f"/{self.folder}"


def parse_bounce_mailbox(raw: str) -> BounceMailbox:
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError:
        raise ValueError(_FORM) from None  # urllib's message would quote the netloc, password included
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(_FORM)
    if not parts.username or parts.password is None:
        raise ValueError(f"{_FORM}: the user and password of the bounce mailbox are missing")
    if port == 0:
        raise ValueError(f"{_FORM}: port 0 is no port")
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    return BounceMailbox(host=parts.hostname, port=port or _DEFAULT_PORTS[parts.scheme],
                         implicit_tls=parts.scheme == "imaps", user=unquote(parts.username),
                         password=unquote(parts.password), folder=folder)
