"""DKIM signatures (RFC 6376) on the mails MailWriter builds: DkimSigner, made once per process.

    Mail.payload_for(relay) -> DkimSigner.sign(that relay's bytes, relay) -> DKIM-Signature + the same bytes

Signing happens where a relay's bytes are final, after its From line is set (a fallback relay's
`from=` changes the From header), and only when that relay is tried: the primary's signature is the
common case, a fallback's is made when the mail fails over to it. The signature is dkimpy's
(`dkim.sign`), relaxed/relaxed, placed before every other header; the rest of the mail is the bytes
MailWriter wrote, unchanged.

d= is DKIM_DOMAIN, else the relay's From domain; s= is DKIM_SELECTOR. From is signed one more time than it
appears (over-signed, RFC 6376 8.15): a From header added later breaks the signature. The key is converted
once, here, into the form dkimpy reads (PKCS#1 PEM for RSA, the base64 of the raw 32-byte seed for Ed25519);
neither form leaves this object (not in its repr, never in a log).
"""

from __future__ import annotations

import base64
import functools

import dkim
from cryptography.hazmat.primitives import serialization

from ..addresses import parse_address
from ..config import Relay
from ..config.dkim import RSA, DkimKey

# What the signature covers: every header MailWriter writes that says who, what or how, and Auto-Submitted
# (a receiver may trust it to stay quiet). "from" twice: over-signed. X-Auto-Response-Suppress is left out:
# Exchange's own header, which a relay may rewrite.
SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                  b"content-transfer-encoding", b"auto-submitted", b"from")
CANONICALIZATION = (b"relaxed", b"relaxed")


class DkimSigner:
    """Signs one relay's bytes of a mail; built once (MailWriter), used by every request's thread."""

    def __init__(self, key: DkimKey, relays: tuple[Relay, ...]):
        self.key = key
        self._relays = relays
        self._private = _dkimpy_key(key)
        self._algorithm = key.algorithm.encode("ascii")
        self._selector = key.selector.encode("ascii")

    def __repr__(self) -> str:
        return f"DkimSigner({self.key.describe()})"

    @functools.cached_property
    def domains(self) -> tuple[bytes, ...]:
        """d= for each relay (Settings.relays order). On first use, not at startup: without SMTP_FROM the service
        starts and answers smtp_not_configured (as MailWriter's From line)."""
        return tuple((self.key.domain or parse_address(relay.from_address).domain.lower()).encode("ascii")
                     for relay in self._relays)

    def sign(self, payload: bytes, relay_index: int) -> bytes:
        """The same bytes with a DKIM-Signature header first, for the relay at `relay_index`."""
        signature = dkim.sign(payload, self._selector, self.domains[relay_index], self._private,
                              canonicalize=CANONICALIZATION, signature_algorithm=self._algorithm,
                              include_headers=SIGNED_HEADERS)
        return signature + payload


def _dkimpy_key(key: DkimKey) -> bytes:
    """The private key as dkimpy reads it: PEM (PKCS#1) for RSA, base64 of the raw seed for Ed25519."""
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    if key.algorithm == RSA:
        return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    return base64.b64encode(seed)
