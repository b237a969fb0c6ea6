"""The doctor's sender domain blocks: what receivers will look up about each From domain in use.

One block per From domain (the primary's and each fallback's, once each), its lines in the doctor's Step
format:

- spf: exactly one `v=spf1` TXT record at the domain, in RFC 7208 syntax (FAIL: none, several, a bad term);
- dkim: with DKIM_PRIVATE_KEY_FILE, the record at `<selector>._domainkey.<domain>` publishes the public half of
  that key (FAIL: missing, revoked, another key); without it a `skip`: the relay signs, with a selector the
  doctor cannot know;
- dmarc: a `v=DMARC1` record at `_dmarc.<domain>`, else at the organisational domain's (WARN when none);
- alignment: the envelope sender (SMTP_BOUNCE_ADDRESS, else the From) and a DKIM_DOMAIN in the From's
  organisational domain, as DMARC wants (WARN when not).

WARN and skip never make the doctor fail; only FAIL does. When DNS cannot be asked at all (a timeout, no
resolver) the block is one WARN: a host without outside DNS still gets a usable doctor. A special-use name
(RFC 6761: .test, .example, .invalid, .localhost) is asked only of DNS_RESOLVER, never of the system's
resolver. DNS is asked through dnspython with short timeouts; only the doctor imports this module, so the
request path never does DNS.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import dns.exception
import dns.resolver

from ..addresses import aligned, organisational_domain, parse_address
from ..config import Settings
from ..config.dkim import ED25519, DkimKey
from ..network import host_port
from .steps import FAIL, OK, SKIP, WARN, Step

QUERY_TIMEOUT_SECONDS = 3.0  # one try at one server
LOOKUP_LIFETIME_SECONDS = 5.0  # one name, retries included: the doctor must stay quick
SPECIAL_USE_TLDS = {"test", "example", "invalid", "localhost"}  # RFC 2606 / RFC 6761

SPF_NONE_FIX = "publish an SPF record that includes your relay, e.g. `include:...` from its documentation"
BULK_SENDER_RULES = (
    "since 2024 Gmail and Yahoo require of bulk senders (5000+ mails a day to their users) SPF and DKIM, and a "
    "DMARC record, at least p=none"
)

Txt = Callable[[str], list[str]]


class DnsUnavailable(Exception):
    """DNS could not be asked (a timeout, no server answering, no resolver configured): nothing is known."""


# --- the block


def sender_domains(settings: Settings) -> list[str]:
    """The From domains in use, the primary's first, each once (lower-cased)."""
    domains: list[str] = []
    for relay in settings.relays:
        if relay.from_address:
            domain = parse_address(relay.from_address).ascii_domain.lower()
            if domain not in domains:
                domains.append(domain)
    return domains


def domain_steps(settings: Settings, domain: str) -> list[Step]:
    """The lines of one domain's block."""
    if is_special_use(domain) and settings.dns_resolver is None:
        return [Step("domain", SKIP, f"{domain} is a special-use name (RFC 6761) no public DNS serves: checked "
                                     "only with DNS_RESOLVER set to a resolver that serves it")]
    ask = lookup(settings)
    try:
        # Every question first: a DNS that stops answering half-way still gives one WARN line, not a mixture.
        return [spf_step(domain, ask), dkim_step(settings.dkim, domain, ask), dmarc_step(domain, ask),
                *alignment_steps(settings, domain)]
    except DnsUnavailable as exc:
        where = host_port(*settings.dns_resolver) if settings.dns_resolver else "the system's resolver"
        return [Step("dns", WARN, f"cannot ask DNS about {domain} ({where}: {exc}): SPF, DKIM and DMARC not "
                                  "checked", "run the doctor where DNS answers, or set DNS_RESOLVER to a resolver "
                                             "that does")]


def is_special_use(domain: str) -> bool:
    return domain == "localhost" or domain.rsplit(".", 1)[-1] in SPECIAL_USE_TLDS


def lookup(settings: Settings) -> Txt:
    """A TXT lookup through DNS_RESOLVER, else the system's resolver: [] for no record, DnsUnavailable when DNS
    cannot be asked."""
    try:
        resolver = dns.resolver.Resolver(configure=settings.dns_resolver is None)
    except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or no nameserver in it
        return _unavailable(f"no resolver configured ({exc})")
    if settings.dns_resolver is not None:
        resolver.nameservers, resolver.port = [settings.dns_resolver[0]], settings.dns_resolver[1]
    resolver.timeout, resolver.lifetime = QUERY_TIMEOUT_SECONDS, LOOKUP_LIFETIME_SECONDS

    def txt(name: str) -> list[str]:
        try:
            answer = resolver.resolve(name.rstrip(".") + ".", "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DnsUnavailable(f"no answer within {LOOKUP_LIFETIME_SECONDS:g} s") from None
        except dns.exception.DNSException as exc:  # NoNameservers (SERVFAIL, refused), a malformed answer ...
            raise DnsUnavailable(f"{type(exc).__name__}: {exc}") from None
        # A record's strings are one value (RFC 7208 3.3, RFC 6376 3.6.2.2): joined without spaces.
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    return txt


def _unavailable(why: str) -> Txt:
    def txt(name: str) -> list[str]:
        raise DnsUnavailable(why)

    return txt


# --- SPF (RFC 7208)


def spf_step(domain: str, txt: Txt) -> Step:
    records = [record for record in txt(domain) if _is_spf(record)]
    if not records:
        return Step("spf", FAIL, f"no SPF record (TXT v=spf1) at {domain}", SPF_NONE_FIX)
    if len(records) > 1:
        listed = "; ".join(f'"{record}"' for record in records)
        return Step("spf", FAIL, f"{len(records)} SPF records at {domain} ({listed}): receivers treat that as a "
                                 "permerror, as if there were none", "merge them into one v=spf1 record")
    record = records[0]
    problem = spf_problem(record)
    if problem:
        return Step("spf", FAIL, f'{domain}: "{record}": {problem}', "correct the record (RFC 7208 syntax)")
    warning, fix = spf_warning(record)
    if warning:
        return Step("spf", WARN, f'{domain}: "{record}": {warning}', fix)
    return Step("spf", OK, f'{domain}: "{record}"')


def _is_spf(record: str) -> bool:
    return record.lower() == "v=spf1" or record.lower().startswith("v=spf1 ")


_MACRO = re.compile(r"%\{[slodiphcrtv][0-9]*r?[.\-+,/_=]*\}|%[%_-]", re.IGNORECASE)
# What a domain-spec is once its macros are set aside: visible characters (RFC 7208 7.1 macro-literal).
_LITERAL = re.compile(r"[\x21-\x24\x26-\x7e]*")
_MACRO_AT_END = re.compile(r"(?:%\{[^}]*\}|%[%_-])$")
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]", re.ASCII)
_MODIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*")
# The mechanisms that take a domain (RFC 7208 5): ":domain" required (True), optional (False), not allowed (None).
_DOMAIN_ARGUMENT = {"all": None, "include": True, "exists": True, "a": False, "mx": False, "ptr": False}
_IP_MECHANISMS = {"ip4": 4, "ip6": 6}
_DUAL_CIDR_MECHANISMS = {"a", "mx"}  # may end in /prefix for IPv4, //prefix for IPv6
_DUAL_CIDR = re.compile(r"(?:/([0-9]{1,2}))?(?://([0-9]{1,3}))?$")


def spf_problem(record: str) -> str:
    """What keeps a v=spf1 record from parsing, naming the bad term; "" when it parses."""
    seen_modifiers: set[str] = set()
    for term in record.split()[1:]:
        name, sep, value = term.partition("=")
        if sep and _MODIFIER_NAME.fullmatch(name):
            name = name.lower()
            if name in ("redirect", "exp"):
                if name in seen_modifiers:
                    return f"{name}= appears twice (a permerror)"
                if not _domain_spec(value):
                    return f"bad term {term!r}: {name}= needs a domain"
            elif not _macro_string(value):
                return f"bad term {term!r}: a modifier's value with a broken macro"
            seen_modifiers.add(name)
            continue
        problem = _mechanism_problem(term)
        if problem:
            return f"bad term {term!r}: {problem}"
    return ""


def _mechanism_problem(term: str) -> str:
    body = term[1:] if term[:1] in "+-?~" else term
    match = re.match(r"[A-Za-z0-9]+", body)
    name = match.group(0).lower() if match else ""
    rest = body[len(name):]
    if name in _IP_MECHANISMS:
        valid = rest.startswith(":") and _network(rest[1:], _IP_MECHANISMS[name])
        return "" if valid else f"{name}: needs an IPv{_IP_MECHANISMS[name]} address or network"
    if name not in _DOMAIN_ARGUMENT:
        return "not an SPF mechanism (all, include, a, mx, ptr, ip4, ip6, exists) nor a modifier (name=value)"
    if name in _DUAL_CIDR_MECHANISMS:
        suffix = _DUAL_CIDR.search(rest)  # always matches, maybe empty
        assert suffix is not None
        v4, v6 = suffix.groups()
        if (v4 is not None and int(v4) > 32) or (v6 is not None and int(v6) > 128):
            return "a CIDR length out of range (/0-32, //0-128)"
        rest = rest[:suffix.start()]
    required = _DOMAIN_ARGUMENT[name]
    if required is None:
        return "" if not rest else f"`{name}` takes no argument"
    if not rest:
        return f"{name} needs a domain (`{name}:example.com`)" if required else ""
    if not rest.startswith(":") or not _domain_spec(rest[1:]):
        return f"{name}: expected `{name}:domain`"
    return ""


def _network(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_network(text, strict=False).version == version
    except ValueError:
        return False


def _macro_string(text: str) -> bool:
    return bool(_LITERAL.fullmatch(_MACRO.sub("", text)))


def _domain_spec(text: str) -> bool:
    """RFC 7208 7.1: a macro-string ending in a macro or in a dot and a top label."""
    if not text or not _macro_string(text):
        return False
    if _MACRO_AT_END.search(text):
        return True
    labels = text.rstrip(".").split(".")
    return len(labels) >= 2 and bool(_TOPLABEL.fullmatch(labels[-1]))


def spf_warning(record: str) -> tuple[str, str]:
    """(what, the fix) for a record that parses yet leaves receivers guessing: no `all` to end it, or
    mechanisms after it that no one evaluates; ("", "") for none."""
    terms = record.split()[1:]
    mechanisms = [term.lstrip("+-?~").lower() for term in terms]
    if "all" in mechanisms:
        ignored = [term for term in terms[mechanisms.index("all") + 1:] if "=" not in term]  # modifiers may follow
        if ignored:
            return f"{' '.join(ignored)} after `all` is never evaluated", "move `all` to the end"
        return "", ""
    if any(mechanism.startswith("redirect=") for mechanism in mechanisms):
        return "", ""
    return ("it ends without `all` or redirect=: mail from anywhere else gets a neutral result",
            "end it with ~all or -all")


# --- DKIM (RFC 6376 3.6.1, RFC 8463)


def dkim_step(key: DkimKey | None, domain: str, txt: Txt) -> Step:
    if key is None:
        return Step("dkim", SKIP, "not signed here (DKIM_PRIVATE_KEY_FILE empty): the relay must sign, and the "
                                  "doctor cannot see its selector (the provider's domain settings show the "
                                  "records to publish)")
    name = key.record_name(domain)
    kind = "ed25519" if key.algorithm == ED25519 else "rsa"
    publish = f'publish {name} TXT "v=DKIM1; k={kind}; p={key.public_key}"'
    records = txt(name)
    if not records:
        return Step("dkim", FAIL, f"no DKIM record at {name} (DKIM_SELECTOR={key.selector})", publish)
    if len(records) > 1:
        return Step("dkim", FAIL, f"{len(records)} TXT records at {name}: receivers may pick either",
                    f"keep one: {publish}")
    tags = dkim_tags(records[0])
    problem = _dkim_problem(tags, kind, key)
    if problem:
        return Step("dkim", FAIL, f"{name}: {problem}", publish)
    strength = "Ed25519" if key.algorithm == ED25519 else f"RSA {key.bits}"
    return Step("dkim", OK, f"{name}: v=DKIM1, k={kind}, p= matches DKIM_PRIVATE_KEY_FILE ({strength})")


def dkim_tags(record: str) -> dict[str, str]:
    """A tag-list (RFC 6376 3.2): `tag=value; ...`, whitespace around and, for p=, inside values dropped."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if "p" in tags:
        tags["p"] = "".join(tags["p"].split())
    return tags


def _dkim_problem(tags: dict[str, str], kind: str, key: DkimKey) -> str:
    if tags.get("v", "DKIM1") != "DKIM1":
        return f"v={tags['v']}, not v=DKIM1"
    if "p" not in tags:
        return "no p= tag: not a DKIM key record"
    if not tags["p"]:
        return "p= is empty: the key is revoked, receivers fail every signature made with it"
    published = tags.get("k", "rsa").lower()
    if published != kind:
        return f"k={published}, but DKIM_PRIVATE_KEY_FILE holds an {kind} key"
    try:
        same = base64.b64decode(tags["p"], validate=True) == base64.b64decode(key.public_key)
    except (binascii.Error, ValueError):
        return "p= is not base64"
    if not same:
        return "the published key does not match DKIM_PRIVATE_KEY_FILE (a rotated key whose DNS was never updated)"
    return ""


# --- DMARC (RFC 7489 6.6.3)


def dmarc_step(domain: str, txt: Txt) -> Step:
    organisational = organisational_domain(domain)
    names = [f"_dmarc.{domain}"] + ([f"_dmarc.{organisational}"] if organisational != domain else [])
    for name in names:
        records = [record for record in txt(name) if re.match(r"v\s*=\s*DMARC1\s*(;|$)", record)]
        if len(records) > 1:
            return Step("dmarc", WARN, f"{len(records)} DMARC records at {name}: receivers ignore them all",
                        "keep one")
        if records:
            policy = dkim_tags(records[0]).get("p")
            whose = "" if name == names[0] else f" (the organisational domain's, for {domain})"
            if not policy:
                return Step("dmarc", WARN, f'{name}{whose}: "{records[0]}" has no p= policy',
                            "add p=none, p=quarantine or p=reject")
            return Step("dmarc", OK, f"{name}{whose}: p={policy}")
    return Step("dmarc", WARN, f"no DMARC record at {' nor '.join(names)}",
                f'{BULK_SENDER_RULES}: publish {names[0]} TXT "v=DMARC1; p=none; rua=mailto:..."')


# --- alignment (RFC 7489 3.1, relaxed)


@dataclass(frozen=True)
class _Sender:
    address: str
    source: str


def alignment_steps(settings: Settings, domain: str) -> Iterator[Step]:
    """The envelope sender(s) this From goes out with, and a DKIM_DOMAIN, against the From's organisational
    domain."""
    senders: list[_Sender] = []
    for relay in settings.relays:
        if relay.from_address and parse_address(relay.from_address).ascii_domain.lower() == domain:
            sender = _Sender(relay.envelope_sender, "SMTP_BOUNCE_ADDRESS" if relay.bounce_address else "the From")
            if sender not in senders:
                senders.append(sender)
    warned = False
    for sender in senders:
        sender_domain = sender.address.rpartition("@")[2].lower()
        if not aligned(sender_domain, domain):
            warned = True
            yield Step("alignment", WARN, f"the envelope sender <{sender.address}> ({sender.source}) is not under "
                                          f"{organisational_domain(domain)}: SPF will then not align for DMARC, "
                                          "only DKIM can",
                       f"use a bounce address under {organisational_domain(domain)}, or make sure every mail is "
                       f"DKIM-signed for {domain}")
    key = settings.dkim
    if key is not None and key.domain and not aligned(key.domain, domain):
        warned = True
        yield Step("alignment", WARN, f"DKIM_DOMAIN {key.domain} is not under {organisational_domain(domain)}: "
                                      "the signature will not align for DMARC",
                   f"set DKIM_DOMAIN to {domain} (or leave it empty: each From domain signs for itself)")
    if not warned:
        envelope = ", ".join(f"<{sender.address}>" for sender in senders)
        yield Step("alignment", OK, f"envelope sender {envelope} and From both under {organisational_domain(domain)}: "
                                    "SPF can align for DMARC")
