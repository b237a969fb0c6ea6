"""DKIM_PRIVATE_KEY_FILE, DKIM_SELECTOR, DKIM_DOMAIN: the key herald-smtp signs every mail with, read and
checked once at startup.

    load_dkim_key(path, selector, domain) -> DkimKey   ValueError in one line, never the key's contents

RSA of at least 2048 bits (RFC 8301 forbids less than 1024; Gmail and Yahoo want 2048), or Ed25519
(RFC 8463). The key's public half, as its DNS record must publish it (`p=`), is derived here too: the doctor
compares it with what `<selector>._domainkey.<domain>` serves.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

MIN_RSA_BITS = 2048
RSA, ED25519 = "rsa-sha256", "ed25519-sha256"
# A selector is one or more DNS labels (RFC 6376 3.1): letters, digits, hyphens, dots between labels.
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*")


@dataclass(frozen=True)
class DkimKey:
    selector: str
    domain: str  # DKIM_DOMAIN, lower-cased; "" signs each mail for its own From domain
    algorithm: str  # RSA or ED25519
    private_pem: bytes = field(repr=False)  # PKCS#8 PEM, unencrypted
    public_key: str  # the p= value its DNS record must carry: base64 of the SubjectPublicKeyInfo (RSA), of the
    # raw 32-byte key (Ed25519)
    bits: int  # RSA modulus size; 256 for Ed25519

    def record_name(self, domain: str) -> str:
        return f"{self.selector}._domainkey.{self.domain or domain}"

    def describe(self) -> str:
        """For the startup line: never the key, only what it is."""
        kind = f"RSA {self.bits}" if self.algorithm == RSA else "Ed25519"
        return f"{kind}, selector {self.selector}, domain {self.domain or '(each From domain)'}"


def selector(raw: str) -> str:
    value = raw.strip()
    if not _SELECTOR.fullmatch(value) or len(value) > 253:
        raise ValueError("a DKIM selector: DNS labels of letters, digits and hyphens, like mail2026 or s1.herald")
    return value


def load_dkim_key(path: str, selector: str, domain: str) -> DkimKey:
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as exc:
        raise ValueError(f"a readable PEM private key file ({path}: {exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # The library's message can quote the file's first line; this one says what was expected.
        raise ValueError(f"an unencrypted PEM private key, RSA or Ed25519 ({path} is not one: openssl genpkey "
                         "-algorithm ed25519, or -algorithm rsa -pkeyopt rsa_keygen_bits:2048)") from None
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of at least {MIN_RSA_BITS} bits ({path} has {key.key_size}: "
                             "receivers ignore or distrust weaker signatures)")
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return DkimKey(selector, domain.lower(), RSA, private_pem, base64.b64encode(public).decode(), key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DkimKey(selector, domain.lower(), ED25519, private_pem, base64.b64encode(public).decode(), 256)
    raise ValueError(f"an RSA or Ed25519 private key ({path} holds a {type(key).__name__.removeprefix('_')})")
