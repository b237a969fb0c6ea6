"""RSA DKIM signatures computed by OpenSSL (#25): DkimSigner's header is the one dkimpy alone writes, byte for
byte, without dkimpy's pure-Python RSA ever running, and without changing dkimpy for anyone else in the process.

PKCS#1 v1.5 and Ed25519 signatures are deterministic, so "the same header" is an exact comparison once the clock
dkimpy reads for t= is held still. Keys are made in the test session (never committed); the mails are MailWriter's.
"""

from __future__ import annotations

import base64
import json
import types

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from herald_smtp.config import settings_from
from herald_smtp.sending.dkim_signer import CANONICALIZATION, SIGNED_HEADERS
from herald_smtp.sending.message import MailWriter
from herald_smtp.sending.request import parse_send_request
from tests.support.client import smtp_env
from tests.test_dkim import SELECTOR, SENDER_DOMAIN, _pem, dkim_env, publish, verifies

NOW = 1796464800  # 2026-12-05 10:00:00 UTC, the t= of every signature here
DATE = "Sat, 05 Dec 2026 10:00:00 +0000"
MAILS = [
    {"to": "a@example.com", "subject": "Your code", "body": "123456"},
    {"to": "a@example.com", "subject": "Ihr Bestätigungscode " * 6, "body": "Grüße " + "x" * 200},
    {"to": "josé@example.com", "subject": "Código", "body": "é"},
]
MAIL_IDS = ["ascii", "folded-non-ascii", "smtputf8"]


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> dict[str, str]:
    """algorithm name -> a PEM private key file made for this run (PKCS#8, as an operator's openssl writes)."""
    directory = tmp_path_factory.mktemp("dkim-openssl-keys")
    keys = {"rsa": rsa.generate_private_key(65537, 2048), "ed25519": ed25519.Ed25519PrivateKey.generate()}
    for name, key in keys.items():
        (directory / f"{name}.pem").write_bytes(_pem(key))
    return {name: str(directory / f"{name}.pem") for name in keys}


@pytest.fixture
def still_clock(monkeypatch):
    """dkimpy's t= from a clock that does not move: only dkimpy's own `time` is replaced, for this test."""
    monkeypatch.setattr(dkim, "time", types.SimpleNamespace(time=lambda: NOW))


def _built(smtp, key_file: str, case: dict):
    request = parse_send_request(json.dumps(case).encode(), None)
    writer = MailWriter(settings_from(smtp_env(smtp) | dkim_env(key_file)))
    return writer.build(request, "id@herald.test", DATE)


def _dkimpy_alone(payload: bytes, key_file: str, algorithm: bytes) -> bytes:
    """The header dkimpy writes by itself (its own RSA or PyNaCl's Ed25519), with the signer's parameters."""
    key = serialization.load_pem_private_key(open(key_file, "rb").read(), password=None)
    if algorithm == b"rsa-sha256":
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    else:
        private = base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                     serialization.NoEncryption()))
    return dkim.sign(payload, SELECTOR.encode(), SENDER_DOMAIN.encode(), private, canonicalize=CANONICALIZATION,
                     signature_algorithm=algorithm, include_headers=SIGNED_HEADERS)


@pytest.fixture
def no_python_rsa(monkeypatch):
    """dkimpy's pure-Python RSA made to fail loudly, where dkimpy's sign looks it up: signing must not reach it."""
    def refuse(*_args):
        raise AssertionError("dkimpy's pure-Python RSA was used")

    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", refuse)


@pytest.mark.parametrize("case", MAILS, ids=MAIL_IDS)
def test_the_rsa_header_is_dkimpy_s_byte_for_byte(case, smtp, key_files, still_clock):
    mail = _built(smtp, key_files["rsa"], case)
    signed = mail.payload_for(0)
    expected = _dkimpy_alone(mail.payload, key_files["rsa"], b"rsa-sha256")
    assert signed == expected + mail.payload
    assert b" t=%d;" % NOW in expected  # the clock was held: the comparison covers t= and b=


@pytest.mark.parametrize("case", MAILS, ids=MAIL_IDS)
def test_the_ed25519_header_is_still_dkimpy_s(case, smtp, key_files, still_clock):
    mail = _built(smtp, key_files["ed25519"], case)
    assert mail.payload_for(0) == _dkimpy_alone(mail.payload, key_files["ed25519"], b"ed25519-sha256") + mail.payload


@pytest.mark.parametrize("case", MAILS, ids=MAIL_IDS)
def test_an_rsa_signature_never_runs_dkimpy_s_python_rsa(case, smtp, key_files, dns_zone, no_python_rsa):
    env = smtp_env(smtp) | dkim_env(key_files["rsa"])
    publish(dns_zone, env, SENDER_DOMAIN)
    signed = _built(smtp, key_files["rsa"], case).payload_for(0)
    assert signed.startswith(b"DKIM-Signature: ")
    assert verifies(signed, dns_zone)  # dkimpy's verifier, against the key the test DNS server publishes
    assert not verifies(signed.replace(b"Date: Sat", b"Date: Sun", 1), dns_zone)


def test_dkimpy_is_left_as_it_was_for_other_users(smtp, key_files, still_clock):
    mail = _built(smtp, key_files["rsa"], MAILS[0])
    mail.payload_for(0)
    # No module global of dkimpy's was swapped: another caller of dkim.sign still gets dkimpy's own RSA.
    assert dkim.RSASSA_PKCS1_v1_5_sign is dkim.crypto.RSASSA_PKCS1_v1_5_sign
    assert _dkimpy_alone(mail.payload, key_files["rsa"], b"rsa-sha256") + mail.payload == mail.payload_for(0)
