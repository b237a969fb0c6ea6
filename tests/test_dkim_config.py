"""The DKIM key and DNS_RESOLVER at startup (issue #24): a usable key is read once, a bad one stops the process in
one line that never shows the key, and its public half is the `p=` value its DNS record must publish."""

from __future__ import annotations

import base64
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from herald_smtp.config import ConfigError, settings_from
from herald_smtp.config.dkim import ED25519, RSA


def write_key(tmp_path, key, name: str = "dkim.pem", password: bytes | None = None) -> str:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path = tmp_path / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return str(path)


def dkim_env(path: str, **more: str) -> dict[str, str]:
    return {"DKIM_PRIVATE_KEY_FILE": path, "DKIM_SELECTOR": "mail2026", **more}


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_a_usable_key_is_read_once_and_its_public_half_is_what_openssl_prints(tmp_path, kind):
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ed25519.Ed25519PrivateKey.generate()
    path = write_key(tmp_path, key)
    dkim = settings_from(dkim_env(path, DKIM_DOMAIN="Example.COM")).dkim
    assert dkim is not None and (dkim.selector, dkim.domain) == ("mail2026", "example.com")
    assert dkim.algorithm == (RSA if kind == "rsa" else ED25519)
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"], capture_output=True,
                         check=True).stdout
    published = der if kind == "rsa" else der[-32:]  # DEPLOYMENT.md's two commands
    assert dkim.public_key == base64.b64encode(published).decode()
    assert dkim.record_name("other.example") == "mail2026._domainkey.example.com"
    assert "PRIVATE" not in repr(dkim) and str(dkim.private_pem[40:80]) not in repr(dkim)


def write_bad(tmp_path, content: bytes) -> str:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda tmp: write_key(tmp, rsa.generate_private_key(65537, 1024)), "an RSA key of at least 2048 bits"),
    (lambda tmp: write_key(tmp, ed25519.Ed25519PrivateKey.generate(), password=b"pw"), "an unencrypted PEM"),
    (lambda tmp: write_key(tmp, ec.generate_private_key(ec.SECP256R1())), "an RSA or Ed25519 private key"),
    (lambda tmp: write_bad(tmp, b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n"),
     "an unencrypted PEM"),
    (lambda tmp: str(tmp / "missing.pem"), "a readable PEM private key file"),
])
def test_a_bad_key_stops_startup_in_one_line(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as caught:
        settings_from(dkim_env(path))
    message = str(caught.value)
    assert message.startswith(f"DKIM_PRIVATE_KEY_FILE: expected {expected}") and "\n" not in message
    assert "BEGIN" not in message and "not base64" not in message


@pytest.mark.parametrize(("env", "expected"), [
    ({"DKIM_SELECTOR": "s1"}, "DKIM_PRIVATE_KEY_FILE: expected the key to sign with"),
    ({"DKIM_DOMAIN": "example.com"}, "DKIM_PRIVATE_KEY_FILE: expected the key to sign with"),
    ({"DKIM_PRIVATE_KEY_FILE": "/x.pem"}, "DKIM_SELECTOR: expected the selector"),
    ({"DKIM_SELECTOR": "-bad-"}, "DKIM_SELECTOR: expected a DKIM selector"),
    ({"DKIM_DOMAIN": "@example.com"}, "DKIM_DOMAIN: expected a domain name"),
    ({"DNS_RESOLVER": "dns.example.net"}, "DNS_RESOLVER: expected an IP address"),
    ({"DNS_RESOLVER": "127.0.0.1:99999"}, "DNS_RESOLVER: expected an IP address"),
])
def test_incomplete_or_malformed_settings_are_named(env, expected):
    with pytest.raises(ConfigError) as caught:
        settings_from(env)
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize(("raw", "parsed"), [
    ("10.0.0.2", ("10.0.0.2", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)), ("[2001:db8::53]", ("2001:db8::53", 53)),
])
def test_dns_resolver_forms(raw, parsed):
    settings = settings_from({"DNS_RESOLVER": raw})
    assert settings.dns_resolver == parsed
    assert settings.redacted()["dns_resolver"] == (f"[{parsed[0]}]:{parsed[1]}" if ":" in parsed[0]
                                                  else f"{parsed[0]}:{parsed[1]}")


def test_without_dkim_nothing_is_read():
    settings = settings_from({})
    assert settings.dkim is None and settings.dns_resolver is None and settings.redacted()["dns_resolver"] == "system"
