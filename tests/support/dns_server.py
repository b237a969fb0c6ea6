"""A real DNS server on 127.0.0.1 (dnslib's, UDP and TCP) answering from records the test sets: the sender
domain's SPF, DKIM and DMARC TXT records, good or broken. DNS_RESOLVER points herald-smtp at it.

    with DnsTestServer() as dns:
        dns.txt("example.com", "v=spf1 include:_spf.example.net -all")
        dns.txt("mail._domainkey.example.com", "v=DKIM1; k=rsa; p=MIIB...")   # split into 255-byte strings
        settings_from({... "DNS_RESOLVER": dns.resolver})

A name with no record of the asked type but others answers NOERROR with no answer; an unknown name NXDOMAIN.
"""

from __future__ import annotations

import threading

from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from .net import LOCALHOST, free_port


class _Records(BaseResolver):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[tuple[str, str], list] = {}
        self.asked: list[tuple[str, str]] = []

    def resolve(self, request, handler):
        reply = request.reply()
        name, kind = _name(str(request.q.qname)), QTYPE[request.q.qtype]
        with self._lock:
            self.asked.append((name, kind))
            answers = list(self.records.get((name, kind), ()))
            known = any(known_name == name for known_name, _ in self.records)
        for rdata in answers:
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
        if not answers and not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class DnsTestServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._records = _Records()
        quiet = DNSLogger(logf=lambda _: None)  # `asked` tells the tests what was asked
        self._servers = [DNSServer(self._records, address=LOCALHOST, port=self.port, tcp=tcp, logger=quiet)
                         for tcp in (False, True)]

    @property
    def resolver(self) -> str:
        """The DNS_RESOLVER value that points at this server."""
        return f"{LOCALHOST}:{self.port}"

    @property
    def asked(self) -> list[tuple[str, str]]:
        """Every (name, type) asked so far, in order."""
        with self._records._lock:
            return list(self._records.asked)

    def txt(self, name: str, *values: str) -> None:
        """Add one TXT record per value at `name`; a value over 255 bytes is split into strings, as zone files do."""
        with self._records._lock:
            self._records.records.setdefault((_name(name), "TXT"), []).extend(
                TXT([value[i:i + 255] for i in range(0, max(len(value), 1), 255)]) for value in values)

    def clear(self) -> None:
        with self._records._lock:
            self._records.records.clear()

    def start(self) -> "DnsTestServer":
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    def __enter__(self) -> "DnsTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _name(name: str) -> str:
    return name.lower().rstrip(".") + "."
