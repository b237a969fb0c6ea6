"""DKIM signatures (RFC 6376) on the mails MailWriter builds: DkimSigner, made once per process.

    Mail.payload_for(relay) -> DkimSigner.sign(that relay's bytes, relay) -> DKIM-Signature + the same bytes

Signing happens where a relay's bytes are final, after its From line is set (a fallback relay's
`from=` changes the From header), and only when that relay is tried: the primary's signature is the
common case, a fallback's is made when the mail fails over to it. The header is dkimpy's (DKIM.sign; for
RSA with OpenSSL's signature, below), relaxed/relaxed, placed before every other header; the rest of the
mail is the bytes MailWriter wrote, unchanged.

d= is DKIM_DOMAIN, else the relay's From domain; s= is DKIM_SELECTOR. From is signed one more time than it
appears (over-signed, RFC 6376 8.15): a From header added later breaks the signature. The key is converted
once, here, into the form dkimpy reads (PKCS#1 PEM for RSA, the base64 of the raw 32-byte seed for Ed25519);
neither form leaves this object (not in its repr, never in a log).

RSA: the signature itself is OpenSSL's (`cryptography`, the key parsed once here), not dkimpy's pure-Python
RSA, which cost 6.5 ms a mail, several times a whole request's CPU; OpenSSL's costs a few tenths of a ms.
dkimpy has no hook for it: DKIM.gen_header calls its module-level RSASSA_PKCS1_v1_5_sign. Replacing that
global would change dkim.sign for every other user in the process and cannot be scoped to one call while other
threads sign, so _OpenSslRsaDkim, a DKIM subclass made per mail, overrides gen_header instead: dkimpy's own
method for the call DKIM.sign makes, built from dkimpy's pieces (fold, hash_headers, the canonicalisation
policy), with only the signing line changed. Everything else stays dkimpy's (body hash, tags, h=, checks).
PKCS#1 v1.5 is deterministic, so the header is the very bytes dkimpy would write: tests/test_dkim_openssl.py
compares them, and fails if a dkimpy release changes what gen_header does. DKIM.sign still parses the PEM it is
given (its own ASN.1 reader, about 0.1 ms) before calling gen_header; those numbers go unused. Ed25519 is
dkimpy's dkim.sign as it was (libsodium through PyNaCl, already cheap).
"""

from __future__ import annotations

import base64
import functools

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

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
        private = serialization.load_pem_private_key(key.private_pem, password=None)  # once, at startup
        self._private = _dkimpy_key(private)
        self._rsa = private if isinstance(private, rsa.RSAPrivateKey) else None  # what OpenSSL signs with
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
        if self._rsa is not None:
            signer = _OpenSslRsaDkim(payload, self._rsa)
        else:
            signer = dkim.DKIM(payload, signature_algorithm=self._algorithm)
        signature = signer.sign(self._selector, self.domains[relay_index], self._private,
                                canonicalize=CANONICALIZATION, include_headers=SIGNED_HEADERS)
        return signature + payload


class _OpenSslRsaDkim(dkim.DKIM):
    """dkimpy's DKIM for one mail, whose rsa-sha256 signature OpenSSL computes (why a subclass: module docstring)."""

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey):
        super().__init__(message, signature_algorithm=RSA.encode("ascii"))
        self._key = key

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk, standardize=False):
        """dkimpy 1.1's DKIM.gen_header as DKIM.sign calls it (standardize=False, its folding), signed by OpenSSL.
        `pk`, dkimpy's own parse of the PEM, is not used."""
        if standardize:  # ARC's form, which DKIM.sign never asks for
            raise NotImplementedError("standardize: only DKIM.sign's header is built here")
        # The header as it is hashed: every tag, b= empty, folded as it will be sent (relaxed unfolds it; simple
        # would hash these very line breaks).
        unsigned = dkim.RE_BTAG.sub(b"\\1", dkim.fold(_tags(fields), namelen=len(header_name), linesep=b"\r\n"))
        hasher = self.hasher()
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(hasher, canon_policy, headers, include_headers,
                                                (header_name, b" " + unsigned), dict(fields))
        signature = self._key.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        # In place, as dkimpy does: DKIM.sign reads the fields back (signature_fields) after this returns.
        fields[[name for name, _ in fields].index(b"b")] = (b"b", base64.b64encode(signature))
        return dkim.fold(_tags(fields) + self.linesep, namelen=len(header_name), linesep=self.linesep)


def _tags(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(name + b"=" + value for name, value in fields)


def _dkimpy_key(private) -> bytes:
    """The private key as dkimpy reads it: PEM (PKCS#1) for RSA, base64 of the raw seed for Ed25519."""
    if isinstance(private, rsa.RSAPrivateKey):
        return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    return base64.b64encode(seed)
