"""`herald-smtp doctor`'s sender domain blocks against a real DNS server on loopback, one broken record at a time.

The relay blocks run against the session's SMTP server (the `smtp` fixture), so that the only FAIL or WARN
lines are the domain's; DNS_RESOLVER points the doctor at a DnsTestServer serving the records of each case.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from herald_smtp.config import settings_from
from herald_smtp.tools.domain import spf_problem, spf_warning
from herald_smtp.tools.doctor import run_doctor
from tests.support.client import smtp_env
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port

DOMAIN = "example.com"
SELECTOR = "mail2026"
GOOD_SPF = "v=spf1 include:_spf.relay.example.net ip4:192.0.2.0/24 -all"
GOOD_DMARC = "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"


@dataclass(frozen=True)
class Key:
    path: str  # the PEM file DKIM_PRIVATE_KEY_FILE names
    k: str  # the DNS record's k=
    p: str  # the DNS record's p=: the public half, as the record publishes it


def _write(directory: Path, name: str, private) -> str:
    path = directory / name
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, Key]:
    """Keys made for this run (never committed): two Ed25519 (one stands for a rotated key) and an RSA 2048."""
    directory = tmp_path_factory.mktemp("dkim")
    made: dict[str, Key] = {}
    for name in ("ed25519", "rotated"):
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        made[name] = Key(_write(directory, f"{name}.pem", private), "ed25519", base64.b64encode(raw).decode())
    private = rsa.generate_private_key(65537, 2048)
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    made["rsa"] = Key(_write(directory, "rsa.pem", private), "rsa", base64.b64encode(spki).decode())
    return made


@pytest.fixture
def dns(dns_zone):
    return dns_zone


@pytest.fixture
def own_dns():
    """A DNS server of the test's own: for what it was asked, or to stop it."""
    with DnsTestServer() as server:
        yield server


def dkim_record(key: Key) -> str:
    return f"v=DKIM1; k={key.k}; p={key.p}"


def publish(dns: DnsTestServer, key: Key | None, domain: str = DOMAIN, spf: str | None = GOOD_SPF,
            dmarc: str | None = GOOD_DMARC) -> None:
    """The domain's records, good unless a test leaves one out (None) or passes a broken one."""
    dns.txt(domain, "google-site-verification=abc123")  # another TXT record, as most domains have
    if spf is not None:
        dns.txt(domain, spf)
    if key is not None:
        dns.txt(f"{SELECTOR}._domainkey.{domain}", dkim_record(key))
    if dmarc is not None:
        dns.txt(f"_dmarc.{domain}", dmarc)


def env_for(smtp, dns: DnsTestServer, key: Key | None, **changes: str) -> dict[str, str]:
    env = smtp_env(smtp) | {"SMTP_FROM": f"noreply@{DOMAIN}", "DNS_RESOLVER": dns.resolver,
                            "SMTP_TIMEOUT_SECONDS": "2"}
    if key is not None:
        env |= {"DKIM_PRIVATE_KEY_FILE": key.path, "DKIM_SELECTOR": SELECTOR}
    return env | changes


def run(env: dict[str, str]) -> tuple[int, dict[str, list[str]], list[str]]:
    """The exit status, each sender domain block's lines by domain, and every line."""
    lines: list[str] = []
    code = run_doctor(settings_from(env), None, out=lines.append)
    domains: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith("== "):
            current = domains.setdefault(line.removeprefix("== sender domain "), []) \
                if line.startswith("== sender domain ") else None
        elif current is not None:
            current.append(line)
    return code, domains, lines


def relay_lines(lines: list[str]) -> list[str]:
    return [line for line in lines[:next(i for i, line in enumerate(lines) if line.startswith("== sender domain"))]
            if not line.startswith("== ")]


def line_of(block: list[str], name: str) -> str:
    [line] = [line for line in block if line.split()[1] == name]
    return line


# --- all good


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_a_good_domain_gets_ok_lines(smtp, own_dns, keys, algorithm):
    key = keys[algorithm]
    publish(own_dns, key)
    code, domains, lines = run(env_for(smtp, own_dns, key))
    assert code == 0, lines
    assert list(domains) == [DOMAIN] and lines.index(f"== sender domain {DOMAIN}") > 0  # after the relay block
    block = domains[DOMAIN]
    assert [line.split()[:2] for line in block] == [["ok", "spf"], ["ok", "dkim"], ["ok", "dmarc"],
                                                    ["ok", "alignment"]], block
    assert line_of(block, "spf").endswith(f'{DOMAIN}: "{GOOD_SPF}"')
    assert f"{SELECTOR}._domainkey.{DOMAIN}: v=DKIM1, k={key.k}, p= matches DKIM_PRIVATE_KEY_FILE" in block[1]
    assert line_of(block, "dmarc").endswith(f"_dmarc.{DOMAIN}: p=reject")
    assert not any(line.startswith(("FAIL", "WARN")) for line in relay_lines(lines)), lines
    assert (f"{SELECTOR}._domainkey.{DOMAIN}.", "TXT") in own_dns.asked


# --- SPF


def test_no_spf_record_fails_with_the_fix(smtp, dns, keys):
    publish(dns, keys["ed25519"], spf=None)
    code, domains, _ = run(env_for(smtp, dns, keys["ed25519"]))
    assert code == 1
    assert line_of(domains[DOMAIN], "spf") == (
        f"FAIL spf        no SPF record (TXT v=spf1) at {DOMAIN} -> fix: publish an SPF record that includes your "
        "relay, e.g. `include:...` from its documentation")
    assert [line.split()[0] for line in domains[DOMAIN]] == ["FAIL", "ok", "ok", "ok"]


def test_two_spf_records_fail_as_a_permerror(smtp, dns, keys):
    publish(dns, keys["ed25519"])
    dns.txt(DOMAIN, "v=spf1 include:_spf.google.com ~all")
    code, domains, _ = run(env_for(smtp, dns, keys["ed25519"]))
    line = line_of(domains[DOMAIN], "spf")
    assert code == 1 and line.startswith(f"FAIL spf        2 SPF records at {DOMAIN}")
    assert "permerror" in line and "include:_spf.google.com" in line and "merge them into one" in line


@pytest.mark.parametrize("record, term", [
    ("v=spf1 include -all", "'include': include needs a domain"),
    ("v=spf1 ip4:192.0.2.300 -all", "'ip4:192.0.2.300': ip4: needs an IPv4 address"),
    ("v=spf1 ip4:2001:db8::1 -all", "'ip4:2001:db8::1'"),
    ("v=spf1 a:example.com/33 -all", "'a:example.com/33': a CIDR length out of range"),
    ("v=spf1 inlcude:_spf.google.com -all", "'inlcude:_spf.google.com': not an SPF mechanism"),
    ("v=spf1 mx all:example.com", "'all:example.com': `all` takes no argument"),
    ("v=spf1 redirect=a.example.com redirect=b.example.com", "redirect= appears twice"),
    ("v=spf1 include:%{z}.example.com -all", "'include:%{z}.example.com'"),
])
def test_an_spf_record_with_a_bad_term_fails_naming_it(smtp, dns, keys, record, term):
    publish(dns, keys["ed25519"], spf=record)
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"]))
    line = line_of(domains[DOMAIN], "spf")
    assert code == 1 and line.startswith(f'FAIL spf        {DOMAIN}: "{record}": '), line
    assert term in line and "-> fix: correct the record (RFC 7208 syntax)" in line


@pytest.mark.parametrize("record", [
    "v=spf1 -all",
    "V=SPF1 INCLUDE:_spf.google.com ~ALL",
    "v=spf1 include:spf.protection.outlook.com include:sendgrid.net -all",
    "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx/24 a:mail.example.com/24//64 ptr ?all",
    "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} +a -all",
    "v=spf1 redirect=_spf.example.com",
    "v=spf1 mx -all exp=explain.%{d2}",
    "v=spf1 a ~all ra=postmaster",  # an unknown modifier is allowed (RFC 7208 6)
])
def test_records_in_rfc_7208_syntax_parse(record):
    assert spf_problem(record) == ""
    assert spf_warning(record) == ("", "")


def test_an_spf_record_without_all_warns_and_does_not_fail(smtp, dns, keys):
    publish(dns, keys["ed25519"], spf="v=spf1 include:_spf.relay.example.net")
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"]))
    line = line_of(domains[DOMAIN], "spf")
    assert code == 0, lines
    assert line.startswith("WARN spf") and "ends without `all`" in line and "end it with ~all or -all" in line


# --- DKIM


def test_a_published_key_that_does_not_match_fails(smtp, dns, keys):
    publish(dns, keys["rotated"])  # DNS still has the old key; the service signs with the new one
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"]))
    line = line_of(domains[DOMAIN], "dkim")
    assert code == 1
    assert line.startswith(f"FAIL dkim       {SELECTOR}._domainkey.{DOMAIN}: the published key does not match "
                           "DKIM_PRIVATE_KEY_FILE (a rotated key whose DNS was never updated)")
    # The fix is the record to publish, with the right public key (never the private one).
    assert line.endswith(f'-> fix: publish {SELECTOR}._domainkey.{DOMAIN} TXT "v=DKIM1; k=ed25519; '
                         f'p={keys["ed25519"].p}"')
    private = "".join(Path(keys["ed25519"].path).read_text().splitlines()[1:-1])
    assert private not in "\n".join(lines)


def test_a_missing_dkim_record_fails_naming_it(smtp, dns, keys):
    publish(dns, None)
    code, domains, _ = run(env_for(smtp, dns, keys["rsa"]))
    line = line_of(domains[DOMAIN], "dkim")
    assert code == 1
    assert line.startswith(f"FAIL dkim       no DKIM record at {SELECTOR}._domainkey.{DOMAIN} "
                           f"(DKIM_SELECTOR={SELECTOR})")
    assert f'k=rsa; p={keys["rsa"].p}"' in line


@pytest.mark.parametrize("record, problem", [
    ("v=DKIM1; k=ed25519; p=", "p= is empty: the key is revoked"),
    ("v=DKIM1; k=rsa; p={p}", "k=rsa, but DKIM_PRIVATE_KEY_FILE holds an ed25519 key"),
    ("v=DKIM2; k=ed25519; p={p}", "v=DKIM2, not v=DKIM1"),
    ("v=DKIM1; k=ed25519; p=not*base64", "p= is not base64"),
    ("v=DKIM1; k=ed25519", "no p= tag"),
])
def test_a_broken_dkim_record_fails_saying_what_is_wrong(smtp, dns, keys, record, problem):
    publish(dns, None)
    dns.txt(f"{SELECTOR}._domainkey.{DOMAIN}", record.format(p=keys["ed25519"].p))
    code, domains, _ = run(env_for(smtp, dns, keys["ed25519"]))
    line = line_of(domains[DOMAIN], "dkim")
    assert code == 1 and line.startswith(f"FAIL dkim       {SELECTOR}._domainkey.{DOMAIN}: {problem}"), line


def test_a_dkim_record_split_over_strings_with_spaces_in_p_matches(smtp, dns, keys):
    key = keys["rsa"]
    spaced = " ".join(key.p[i:i + 64] for i in range(0, len(key.p), 64))  # as some DNS consoles write it
    publish(dns, None)
    dns.txt(f"{SELECTOR}._domainkey.{DOMAIN}", f"v=DKIM1; k=rsa; p={spaced}")  # > 255 bytes: several strings
    code, domains, lines = run(env_for(smtp, dns, key))
    assert code == 0, lines
    assert line_of(domains[DOMAIN], "dkim").startswith("ok   dkim")


def test_without_local_signing_the_relay_must_sign(smtp, own_dns, keys):
    publish(own_dns, keys["ed25519"])
    code, domains, _ = run(env_for(smtp, own_dns, None))
    line = line_of(domains[DOMAIN], "dkim")
    assert code == 0
    assert line.startswith("skip dkim       not signed here (DKIM_PRIVATE_KEY_FILE empty): the relay must sign, and "
                           "the doctor cannot see its selector")
    assert not any("_domainkey" in name for name, _ in own_dns.asked)


# --- DMARC


def test_no_dmarc_record_warns_with_what_gmail_and_yahoo_require_and_exits_0(smtp, dns, keys):
    publish(dns, keys["ed25519"], dmarc=None)
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"]))
    line = line_of(domains[DOMAIN], "dmarc")
    assert code == 0, lines
    assert line.startswith(f"WARN dmarc      no DMARC record at _dmarc.{DOMAIN} -> fix: since 2024 Gmail and Yahoo "
                           "require of bulk senders (5000+ mails a day to their users) SPF and DKIM, and a DMARC "
                           "record, at least p=none")


def test_dmarc_at_the_organisational_domain_only_is_found(smtp, own_dns, keys):
    sub = f"mail.{DOMAIN}"
    publish(own_dns, keys["ed25519"], sub, dmarc=None)
    own_dns.txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=quarantine; sp=none")
    code, domains, lines = run(env_for(smtp, own_dns, keys["ed25519"], SMTP_FROM=f"noreply@{sub}"))
    assert code == 0, lines
    assert line_of(domains[sub], "dmarc") == (f"ok   dmarc      _dmarc.{DOMAIN} (the organisational domain's, for "
                                              f"{sub}): p=quarantine")
    asked = [name for name, kind in own_dns.asked]
    assert asked.index(f"_dmarc.{sub}.") < asked.index(f"_dmarc.{DOMAIN}.")  # the From domain's own first


def test_a_dmarc_record_without_a_policy_warns(smtp, dns, keys):
    publish(dns, keys["ed25519"], dmarc="v=DMARC1; rua=mailto:dmarc@example.com")
    code, domains, _ = run(env_for(smtp, dns, keys["ed25519"]))
    assert code == 0 and line_of(domains[DOMAIN], "dmarc").startswith("WARN dmarc") and "no p= policy" in \
        line_of(domains[DOMAIN], "dmarc")


# --- alignment


def test_a_bounce_address_in_another_domain_warns_that_spf_will_not_align(smtp, dns, keys):
    publish(dns, keys["ed25519"])
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"], SMTP_BOUNCE_ADDRESS="bounces@mailer.example.net"))
    assert code == 0, lines
    line = line_of(domains[DOMAIN], "alignment")
    assert line.startswith("WARN alignment  the envelope sender <bounces@mailer.example.net> (SMTP_BOUNCE_ADDRESS) "
                           f"is not under {DOMAIN}: SPF will then not align for DMARC")


def test_a_bounce_address_in_a_subdomain_is_aligned(smtp, dns, keys):
    publish(dns, keys["ed25519"])
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"], SMTP_BOUNCE_ADDRESS=f"bounces@b.{DOMAIN}"))
    assert code == 0, lines
    assert line_of(domains[DOMAIN], "alignment").startswith(
        f"ok   alignment  envelope sender <bounces@b.{DOMAIN}> and From both under {DOMAIN}: SPF can align")


def test_a_dkim_domain_in_another_organisational_domain_warns(smtp, dns, keys):
    publish(dns, None)
    dns.txt(f"{SELECTOR}._domainkey.signer.example.net", dkim_record(keys["ed25519"]))  # where DKIM_DOMAIN puts it
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"], DKIM_DOMAIN="signer.example.net"))
    assert code == 0, lines
    assert line_of(domains[DOMAIN], "dkim").startswith(f"ok   dkim       {SELECTOR}._domainkey.signer.example.net")
    line = line_of(domains[DOMAIN], "alignment")
    assert line.startswith(f"WARN alignment  DKIM_DOMAIN signer.example.net is not under {DOMAIN}")


# --- when DNS cannot be asked, special-use names, several From domains


def test_dns_down_is_one_warn_line_never_a_fail(smtp, own_dns, keys):
    publish(own_dns, keys["ed25519"])
    own_dns.stop()
    code, domains, lines = run(env_for(smtp, own_dns, keys["ed25519"]))
    assert code == 0, lines
    [line] = domains[DOMAIN]
    assert line.startswith(f"WARN dns        cannot ask DNS about {DOMAIN} ({own_dns.resolver}: no answer within 5 s): "
                           "SPF, DKIM and DMARC not checked"), line
    assert "DNS_RESOLVER" in line


def test_a_special_use_domain_without_dns_resolver_is_skipped_and_dns_never_asked(smtp, own_dns, keys):
    publish(own_dns, keys["ed25519"], "herald.test")
    env = env_for(smtp, own_dns, keys["ed25519"], SMTP_FROM="noreply@herald.test")
    del env["DNS_RESOLVER"]
    code, domains, lines = run(env)
    assert code == 0, lines
    assert domains["herald.test"] == ["skip domain     herald.test is a special-use name (RFC 6761) no public DNS "
                                      "serves: checked only with DNS_RESOLVER set to a resolver that serves it"]
    assert own_dns.asked == []


def test_a_special_use_domain_is_checked_with_dns_resolver_set(smtp, dns, keys):
    publish(dns, keys["ed25519"], "herald.test")
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"], SMTP_FROM="noreply@herald.test"))
    assert code == 0, lines
    assert [line.split()[0] for line in domains["herald.test"]] == ["ok"] * 4


def test_a_fallback_relay_with_another_from_domain_gets_a_block_of_its_own(smtp, dns, keys, server_factory):
    other = server_factory()
    publish(dns, keys["ed25519"])
    publish(dns, None, "alerts.example.org", spf="v=spf1 -all", dmarc=None)
    fallbacks = (f"smtp+plain://127.0.0.1:{other.port}?from=noreply@alerts.example.org,"
                 f"smtp+plain://127.0.0.1:{other.port}?from=second@{DOMAIN}")  # the same domain: no second block
    code, domains, lines = run(env_for(smtp, dns, keys["ed25519"], SMTP_FALLBACK_URLS=fallbacks))
    assert list(domains) == [DOMAIN, "alerts.example.org"], lines
    assert all(line.startswith("ok ") for line in domains[DOMAIN])
    fallback = domains["alerts.example.org"]
    assert [line.split()[:2] for line in fallback] == [["ok", "spf"], ["FAIL", "dkim"], ["WARN", "dmarc"],
                                                       ["ok", "alignment"]], fallback
    assert f"no DKIM record at {SELECTOR}._domainkey.alerts.example.org" in fallback[1]
    assert code == 1


def test_the_domain_block_runs_when_the_relay_fails(dns, keys):
    publish(dns, keys["ed25519"])
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_FROM": f"noreply@{DOMAIN}",
           "DNS_RESOLVER": dns.resolver, "DKIM_PRIVATE_KEY_FILE": keys["ed25519"].path, "DKIM_SELECTOR": SELECTOR}
    code, domains, lines = run(env)
    assert code == 1 and relay_lines(lines)[-1].startswith("FAIL tcp")
    assert [line.split()[0] for line in domains[DOMAIN]] == ["ok"] * 4


def test_the_cli_prints_the_block_and_exits_1_only_for_a_fail(smtp, dns, keys, tmp_path):
    publish(dns, keys["ed25519"], dmarc=None)  # a WARN
    env = {"PATH": "/usr/bin:/bin", **env_for(smtp, dns, keys["ed25519"])}
    command = [sys.executable, "-m", "herald_smtp.tools.cli", "doctor"]
    warned = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert f"== sender domain {DOMAIN}\n" in warned.stdout and "WARN dmarc" in warned.stdout
    dns.clear()
    failed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "FAIL spf" in failed.stdout and "FAIL dkim" in failed.stdout


def test_the_request_path_never_imports_dns():
    script = ("import sys, herald_smtp.web.app, herald_smtp.sending.service, herald_smtp.tools.serve; "
              "print(sorted(m for m in sys.modules if m == 'dns.resolver' or m == 'herald_smtp.tools.domain'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
