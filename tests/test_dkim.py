"""DKIM signing (#24): mails sent through the app, as the real test SMTP server received them, verified by
dkimpy against the public key a real DNS server on loopback publishes (tests/support/dns_server.py), asked
through dnspython, as a receiver would.

Keys are made in the test session (never committed). Each "verifies" test has its counterpart that must not
verify, so the check is shown able to fail: a byte of the body, the Subject, an added From header.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from herald_smtp.config import ConfigError, settings_from
from herald_smtp.config.dkim import RSA
from herald_smtp.logs import log_startup
from herald_smtp.sending.dkim_signer import SIGNED_HEADERS
from herald_smtp.sending.message import MailWriter
from herald_smtp.sending.request import parse_send_request
from herald_smtp.web.services import EXTENSION
from tests.support.client import API_KEY, post, send, smtp_env
from tests.support.dns_server import DnsTestServer
from tests.support.herald_process import HeraldProcess
from tests.support.net import free_port
from tests.test_failover import chain_env, url_of

SELECTOR = "mail2026"
SENDER_DOMAIN = "herald.test"  # smtp_env's SMTP_FROM is noreply@herald.test


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> dict[str, str]:
    """algorithm name -> a PEM private key file made for this run."""
    directory = tmp_path_factory.mktemp("dkim-keys")
    files = {}
    keys = {"rsa": rsa.generate_private_key(65537, 2048), "ed25519": ed25519.Ed25519PrivateKey.generate()}
    for name, key in keys.items():
        path = directory / f"{name}.pem"
        path.write_bytes(_pem(key))
        files[name] = str(path)
    return files


def dkim_env(key_file: str, **extra: str) -> dict[str, str]:
    return {"DKIM_PRIVATE_KEY_FILE": key_file, "DKIM_SELECTOR": SELECTOR} | extra


def publish(zone: DnsTestServer, env: dict[str, str], domain: str) -> None:
    """The DKIM record of the configured key at <selector>._domainkey.<domain>, as an operator publishes it."""
    key = settings_from(env).dkim
    kind = "rsa" if key.algorithm == RSA else "ed25519"
    zone.txt(f"{key.selector}._domainkey.{domain}", f"v=DKIM1; k={kind}; p={key.public_key}")


def dns_lookup(zone: DnsTestServer):
    """dkimpy's dnsfunc: the TXT record asked from the test DNS server through dnspython."""
    host, port = zone.resolver.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [host], int(port)

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii").rstrip("."), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)  # one record; its 255-byte strings joined, as RFC 6376 3.6.2.2 says

    return txt


def verifies(raw: bytes, zone: DnsTestServer) -> bool:
    return dkim.verify(raw, dnsfunc=dns_lookup(zone))


def signature_tags(raw: bytes) -> dict[str, str]:
    [signature] = re.findall(rb"(?ms)^DKIM-Signature:(.*?)\r\n(?=\S)", raw)
    value = re.sub(rb"\s+", b"", signature).decode()
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def sent_through_the_app(make_client, env: dict[str, str], body: dict, server):
    response = send(make_client(settings_from(env)), body)
    assert response.status_code == 200, response.get_data(as_text=True)
    [mail] = server.wait_for(1)
    return mail


# --- signed mails verify, as received


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_a_sent_mail_verifies_against_the_published_key(algorithm, smtp, make_client, key_files, dns_zone):
    env = smtp_env(smtp) | dkim_env(key_files[algorithm])
    publish(dns_zone, env, SENDER_DOMAIN)
    mail = sent_through_the_app(make_client, env, {"to": "a@example.com", "subject": "Your code", "body": "123456"},
                                smtp)
    assert mail.raw.startswith(b"DKIM-Signature: ")
    assert verifies(mail.raw, dns_zone)
    assert (f"{SELECTOR}._domainkey.{SENDER_DOMAIN}.", "TXT") in dns_zone.asked  # the test DNS server was asked
    tags = signature_tags(mail.raw)
    assert tags["a"] == f"{algorithm}-sha256" and tags["c"] == "relaxed/relaxed"
    assert tags["d"] == SENDER_DOMAIN and tags["s"] == SELECTOR
    assert tags["h"].split(":") == [name.decode() for name in SIGNED_HEADERS]
    assert tags["h"].split(":").count("from") == 2  # over-signed


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_a_mail_changed_after_signing_fails(algorithm, smtp, make_client, key_files, dns_zone):
    env = smtp_env(smtp) | dkim_env(key_files[algorithm])
    publish(dns_zone, env, SENDER_DOMAIN)
    raw = sent_through_the_app(make_client, env, {"to": "a@example.com", "subject": "Your code",
                                                  "body": "Your code is 123456"}, smtp).raw
    assert verifies(raw, dns_zone)
    assert not verifies(raw.replace(b"123456", b"123457"), dns_zone)  # one byte of the body
    assert not verifies(raw.replace(b"Subject: Your code", b"Subject: Your cude"), dns_zone)


def test_a_mail_whose_record_holds_another_key_fails(smtp, make_client, key_files, dns_zone, tmp_path):
    env = smtp_env(smtp) | dkim_env(key_files["rsa"])
    previous = tmp_path / "previous.pem"
    previous.write_bytes(_pem(rsa.generate_private_key(65537, 2048)))
    publish(dns_zone, dkim_env(str(previous)), SENDER_DOMAIN)  # the key was rotated, its DNS record was not
    raw = sent_through_the_app(make_client, env, {"to": "a@example.com"}, smtp).raw
    assert not verifies(raw, dns_zone)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_a_non_ascii_subject_and_body_verify(algorithm, smtp, make_client, key_files, dns_zone):
    env = smtp_env(smtp) | dkim_env(key_files[algorithm])
    publish(dns_zone, env, SENDER_DOMAIN)
    mail = sent_through_the_app(make_client, env, {"to": "a@example.com", "subject": "Ihr Bestätigungscode: 482913",
                                                   "body": "Grüße, Ihr Code ist 482913"}, smtp)
    assert b"=?utf-8?" in mail.raw and b"Content-Transfer-Encoding: base64" in mail.raw  # RFC 2047, base64
    assert str(mail.message["Subject"]) == "Ihr Bestätigungscode: 482913"
    assert verifies(mail.raw, dns_zone)
    assert not verifies(mail.raw.replace(b"=?utf-8?", b"=?UTF-8?", 1), dns_zone)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_an_smtputf8_mail_verifies(algorithm, smtp, make_client, key_files, dns_zone):
    env = smtp_env(smtp) | dkim_env(key_files[algorithm])
    publish(dns_zone, env, SENDER_DOMAIN)
    mail = sent_through_the_app(make_client, env, {"to": "josé@example.com", "subject": "Código"}, smtp)
    assert mail.smtp_utf8 and "To: josé@example.com".encode() in mail.raw  # UTF-8 headers (RFC 6532)
    assert verifies(mail.raw, dns_zone)
    assert not verifies(mail.raw.replace("josé".encode(), "jose\u0301".encode(), 1), dns_zone)


def test_an_added_from_header_breaks_the_over_signed_signature(smtp, make_client, key_files, dns_zone):
    env = smtp_env(smtp) | dkim_env(key_files["ed25519"])
    publish(dns_zone, env, SENDER_DOMAIN)
    raw = sent_through_the_app(make_client, env, {"to": "a@example.com"}, smtp).raw
    # A verifier takes the lowest From for the signature; a reader may be shown the top one.
    forged_from = b"From: Security Team <security@attacker.test>\r\n"
    assert verifies(raw, dns_zone)
    assert not verifies(forged_from + raw, dns_zone)
    # dkimpy's verifier would catch an added From even without over-signing (it appends "from" to h= itself,
    # its bug 644046), so it cannot show the difference; other verifiers hash only what h= lists, and there
    # "from" twice is what covers the absent second From.
    assert signature_tags(raw)["h"].split(":").count("from") == 2


def _unsigned(raw: bytes) -> bytes:
    """The mail without its DKIM-Signature header (the first header, with its folded lines)."""
    return re.sub(rb"\ADKIM-Signature:.*?\r\n(?=\S)", b"", raw, flags=re.S)


# --- the bytes: today's, plus one header


@pytest.mark.parametrize("case", [
    {"to": "a@example.com", "subject": "Your code", "body": "123456"},
    {"to": "a@example.com", "subject": "Ihr Bestätigungscode " * 6, "body": "Grüße " + "x" * 200},
    {"to": "josé@example.com", "subject": "Código", "body": "é"},
], ids=["simple", "folded-non-ascii", "smtputf8"])
def test_signing_adds_one_header_and_changes_no_byte(case, smtp, key_files):
    request = parse_send_request(json.dumps(case).encode(), None)
    date = "Sat, 05 Dec 2026 10:00:00 +0000"
    plain = MailWriter(settings_from(smtp_env(smtp))).build(request, "id@herald.test", date)
    signed = MailWriter(settings_from(smtp_env(smtp) | dkim_env(key_files["rsa"]))).build(request, "id@herald.test",
                                                                                           date)
    assert plain.signer is None and plain.payload_for(0) is plain.payload  # unsigned: no work, no copy
    assert signed.payload == plain.payload
    sent = signed.payload_for(0)
    assert sent.startswith(b"DKIM-Signature: ") and sent.count(b"DKIM-Signature:") == 1
    assert _unsigned(sent) == plain.payload


# --- a fallback relay with another From


def test_a_fallback_with_another_from_is_signed_for_its_own_domain(server_factory, make_client, key_files,
                                                                   dns_zone):
    primary, fallback = server_factory(), server_factory()
    env = chain_env(primary, url_of(fallback, **{"from": "alerts@fallback.test"}),
                    SMTP_PORT=str(free_port())) | dkim_env(key_files["rsa"])  # the primary refuses: nothing sent
    publish(dns_zone, env, "fallback.test")  # only there: a signature for herald.test would not verify
    mail = sent_through_the_app(make_client, env, {"to": "a@example.com"}, fallback)
    assert mail.mail_from == "alerts@fallback.test" and mail.raw.count(b"DKIM-Signature:") == 1
    assert signature_tags(mail.raw)["d"] == "fallback.test"
    assert verifies(mail.raw, dns_zone)
    assert not verifies(mail.raw.replace(b"alerts@fallback.test", b"alarms@fallback.test", 1), dns_zone)


def test_a_primary_is_signed_for_its_own_domain_when_a_fallback_has_another(server_factory, make_client, key_files,
                                                                             dns_zone):
    primary, fallback = server_factory(), server_factory()
    env = chain_env(primary, url_of(fallback, **{"from": "alerts@fallback.test"})) | dkim_env(key_files["ed25519"])
    publish(dns_zone, env, SENDER_DOMAIN)
    mail = sent_through_the_app(make_client, env, {"to": "a@example.com"}, primary)
    assert signature_tags(mail.raw)["d"] == SENDER_DOMAIN and verifies(mail.raw, dns_zone)
    assert fallback.connections == 0


def test_dkim_domain_signs_every_relay_s_mail_for_that_domain(server_factory, make_client, key_files, dns_zone):
    primary, fallback = server_factory(), server_factory()
    env = chain_env(primary, url_of(fallback, **{"from": "alerts@mail.herald.test"}), SMTP_PORT=str(free_port()),
                    DKIM_DOMAIN="Herald.Test") | dkim_env(key_files["ed25519"])
    publish(dns_zone, env, SENDER_DOMAIN)
    mail = sent_through_the_app(make_client, env, {"to": "a@example.com"}, fallback)
    assert signature_tags(mail.raw)["d"] == SENDER_DOMAIN and verifies(mail.raw, dns_zone)


def test_a_relay_whose_circuit_is_open_is_not_signed_for(server_factory, make_client, key_files, clock):
    primary, fallback = server_factory(), server_factory()
    env = chain_env(primary, url_of(fallback, **{"from": "alerts@fallback.test"}), SMTP_PORT=str(free_port()),
                    SMTP_CIRCUIT_THRESHOLD="1", SMTP_CIRCUIT_COOLDOWN_SECONDS="30") | dkim_env(key_files["rsa"])
    client = make_client(settings_from(env), clock=clock)
    signer = client.application.extensions[EXTENSION].send.writer.signer
    signed_for = []
    sign = signer.sign
    signer.sign = lambda payload, index: signed_for.append(index) or sign(payload, index)
    assert send(client, {"to": "a@example.com"}).status_code == 200  # the primary fails: its circuit opens
    assert signed_for == [0, 1]
    assert send(client, {"to": "b@example.com"}).status_code == 200
    assert signed_for == [0, 1, 1]  # the open primary was skipped without a signature
    assert len(fallback.wait_for(2)) == 2


# --- startup: the alignment warning, the key never shown


def test_startup_warns_when_dkim_domain_does_not_align_with_a_relay_s_from(smtp, key_files, caplog):
    fallback = url_of(smtp, **{"from": "alerts@other.example"})
    unaligned = smtp_env(smtp) | {"SMTP_FALLBACK_URLS": fallback} | dkim_env(key_files["rsa"],
                                                                              DKIM_DOMAIN="herald.test")
    with caplog.at_level(logging.WARNING, logger="herald_smtp"):
        log_startup(settings_from(unaligned))
    [line] = [m for m in caplog.messages if "DKIM_DOMAIN" in m]
    assert "herald.test" in line and "other.example" in line and f"127.0.0.1:{smtp.port}" in line
    assert "DMARC" in line
    for env in (unaligned | {"SMTP_FALLBACK_URLS": url_of(smtp, **{"from": "alerts@mail.herald.test"})},
                unaligned | {"DKIM_DOMAIN": ""},  # each mail signed for its own From domain
                smtp_env(smtp) | {"SMTP_FALLBACK_URLS": fallback}):  # no signing
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="herald_smtp"):
            log_startup(settings_from(env))
        assert not [m for m in caplog.messages if "DKIM_DOMAIN" in m], env


def _key_fragments(path: str) -> list[str]:
    """Pieces of every form of the private key (its PEM, PKCS#1 PEM, private exponent, Ed25519 seed) that are
    not public: an RSA private key holds the modulus, which the DNS record publishes."""
    key = serialization.load_pem_private_key(open(path, "rb").read(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_text = b"".join(public.splitlines()[1:-1]).decode()
    forms = [_pem(key)]
    if isinstance(key, rsa.RSAPrivateKey):
        forms.append(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
        forms.append(str(key.private_numbers().d).encode())
    else:
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        forms += [base64.b64encode(seed), seed.hex().encode()]
    fragments = [line[i:i + 24].decode() for form in forms for line in form.splitlines()
                 if not line.startswith(b"-----") for i in range(0, len(line) - 23, 24)]
    return [fragment for fragment in fragments if fragment not in public_text]


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_the_key_is_never_in_a_log_a_repr_or_an_error(algorithm, smtp, key_files, tmp_path, caplog):
    fragments = _key_fragments(key_files[algorithm])
    assert any(fragment in open(key_files[algorithm]).read() for fragment in fragments)  # real pieces of the file
    env = smtp_env(smtp) | dkim_env(key_files[algorithm]) | {"WEB_CONCURRENCY": "1", "API_KEY": API_KEY,
                                                              "LOG_LEVEL": "DEBUG"}
    with HeraldProcess(tmp_path, env) as herald:
        status, body, _ = post(herald.url, {"to": "a@example.com"}, {"X-API-Key": API_KEY})
        assert status == 200, body
        log = herald.log_text()
    assert "selector mail2026" in log and ("RSA 2048" if algorithm == "rsa" else "Ed25519") in log  # the startup line
    settings = settings_from(env)
    writer = MailWriter(settings)
    mail = writer.build(parse_send_request(b'{"to": "a@example.com"}', None), "id@herald.test")
    shown = [log, repr(settings), repr(settings.dkim), repr(writer.signer), repr(mail), json.dumps(settings.redacted()),
             repr(dataclasses.asdict(settings.dkim) | {"private_pem": "(checked apart)"})]
    # A key that fails a startup check: the error names the file and what was expected, never its contents.
    weak = tmp_path / "weak.pem"
    weak.write_bytes(_pem(rsa.generate_private_key(65537, 1024)))
    garbled = tmp_path / "garbled.pem"
    garbled.write_bytes(open(key_files[algorithm], "rb").read()[:-60])
    for path in (weak, garbled):
        with pytest.raises(ConfigError) as refused:
            settings_from(smtp_env(smtp) | dkim_env(str(path)))
        shown.append(str(refused.value))
        fragments += _key_fragments(str(weak)) if path == weak else []
    assert "at least 2048 bits" in shown[-2] and "not one" in shown[-1]
    for text in shown:
        for fragment in fragments:
            assert fragment not in text
