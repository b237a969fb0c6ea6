"""The REDIS_URL grammar: the URL parsed once into a RedisTarget, the Redis that both the idempotency store
(idempotency/store.py) and the rate limiter (sending/abuse.py) reach.

    empty or memory://                                  the in-process store (one worker process)
    redis://[[user]:password@]host[:port][/db]          one Redis
    rediss://...                                        one Redis over TLS (REDIS_TLS_CA_FILE, REDIS_TLS_VERIFY)
    unix:///path/to/redis.sock[?db=N]                   one Redis on a unix socket
    redis+sentinel://[:password@]host:port[,host:port...]/SERVICE_NAME[?db=N&sentinel_password=...]
    redis+cluster://[:password@]host:port[,host:port...]

The schemes are the `limits` library's, so the rate limiter reaches the same Redis, built from the same
RedisTarget (redis_clients.py builds the redis-py clients for both). Errors are ValueError with the
expected form and never the URL itself, nor any part of it: it may hold a password.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from .network import host_port

# scheme -> topology; None is the in-process store.
_BACKENDS: dict[str, str | None] = {
    "memory": None,
    "redis": "single",
    "rediss": "single",
    "unix": "unix",
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}
EXPECTED_FORM = ("a URL starting with memory://, redis://, rediss://, unix://, redis+sentinel:// "
                 "or redis+cluster://")
_FORMS = {
    "redis": "redis://[[user]:password@]host[:port][/db]",
    "rediss": "rediss://[[user]:password@]host[:port][/db]",
    "unix": "unix:///path/to/redis.sock[?db=N]",
    "redis+sentinel": "redis+sentinel://[:password@]host:port[,host:port...]/SERVICE_NAME[?db=N&sentinel_password=...]",
    "redis+cluster": "redis+cluster://[:password@]host:port[,host:port...]",
}
# Query parameters each form takes; anything else (redis-py's socket_timeout=, ssl_cert_reqs=, ...) would
# silently change what the code below guarantees, so it is refused.
_QUERY = {"redis": {"db", "password"}, "rediss": {"db", "password"}, "unix": {"db", "password"},
          "redis+sentinel": {"db", "sentinel_password"}, "redis+cluster": set()}
_DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisTarget:
    """Where the shared records live: everything redis_clients.py needs, parsed once from REDIS_URL."""

    topology: str  # "single", "unix", "sentinel" or "cluster"
    hosts: tuple[tuple[str, int], ...] = ()  # single: the server; sentinel: the sentinels; cluster: startup nodes
    path: str = ""  # unix: the socket
    db: int = 0
    username: str | None = None
    # The passwords stay out of repr(): a target in a traceback or a log line must not show them.
    password: str | None = field(default=None, repr=False)  # the data nodes' password
    service_name: str = ""  # sentinel: the monitored master's name
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: str = ""
    tls_verify: bool = True

    @property
    def host_list(self) -> str:
        """host:port[,host:port...], IPv6 addresses in brackets."""
        return ",".join(host_port(host, port) for host, port in self.hosts)

    def describe(self) -> str:
        """For the startup line: topology and hosts, never a password."""
        hosts = self.host_list
        if self.topology == "unix":
            return f"single Redis on unix socket {self.path}, db {self.db}"
        if self.topology == "sentinel":
            return f"Sentinel service {self.service_name} via sentinels {hosts}, db {self.db}"
        if self.topology == "cluster":
            return f"Redis Cluster via startup nodes {hosts}"
        tls = "TLS" + ("" if self.tls_verify else " without certificate verification") if self.tls else "no TLS"
        return f"single Redis at {hosts}, db {self.db}, {tls}"


def topology_for(url: str) -> str | None:
    """The topology REDIS_URL's scheme names (None: in-process); ValueError naming the accepted forms."""
    if not url:
        return None
    scheme, found, _ = url.partition("://")
    if not found or scheme not in _BACKENDS:
        raise ValueError(EXPECTED_FORM)
    return _BACKENDS[scheme]


def backend_for(url: str) -> str:
    """'memory' or 'redis'; ValueError naming the accepted forms for anything else."""
    return "memory" if topology_for(url) is None else "redis"


class _Reason(ValueError):
    """Why a REDIS_URL does not fit its form, in words of our own: the only error text shown with the form."""


# A `?`, `&`, `#` or `/` left in a password moves the rest of it into the query, fragment or path, where a
# parser would complain about (and could quote) password text.
_ENCODE_HINT = "percent-encode ? & # / in a password"


def parse_redis_url(url: str, tls_ca_file: str = "", tls_verify: bool = True) -> RedisTarget | None:
    """REDIS_URL -> RedisTarget (None for the in-process store); ValueError with the expected form."""
    topology = topology_for(url)
    if topology is None:
        return None
    scheme = url.partition("://")[0]
    form = _FORMS[scheme]
    try:
        return _parse(url, scheme, topology, tls_ca_file, tls_verify)
    except _Reason as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ValueError(f"{form}{detail}") from None
    except ValueError:
        # urllib's own messages quote the netloc, password and all: only our reasons are ever shown.
        raise ValueError(f"{form} ({_ENCODE_HINT})") from None


def _parse(url: str, scheme: str, topology: str, tls_ca_file: str, tls_verify: bool) -> RedisTarget:
    parts = urlsplit(url)
    if parts.fragment or url.endswith("#"):
        raise _Reason(f"no #fragment; {_ENCODE_HINT}")
    query = _query(parts.query, _QUERY[scheme])
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    if "password" in query:
        password = query["password"]
    target = functools.partial(RedisTarget, username=username, password=password, tls=scheme == "rediss",
                               tls_ca_file=tls_ca_file, tls_verify=tls_verify)
    if topology == "unix":
        if hostlist or not parts.path:
            raise _Reason("")
        return target("unix", path=unquote(parts.path), db=_db(query.get("db", "0")))
    hosts = _hosts(hostlist, default_port=_DEFAULT_PORT if topology == "single" else None)
    if topology == "single":
        if len(hosts) != 1:
            raise _Reason("one host")
        db = query.get("db") or parts.path.strip("/") or "0"
        return target("single", hosts, db=_db(db))
    if topology == "sentinel":
        service = unquote(parts.path.strip("/"))
        if not service or "/" in service:
            raise _Reason("the service name is missing" if not service else "one service name")
        return target("sentinel", hosts, db=_db(query.get("db", "0")), service_name=service,
                      sentinel_password=query.get("sentinel_password"))
    if parts.path.strip("/"):
        raise _Reason("a cluster has no database number or path")
    return target("cluster", hosts)


def _query(raw: str, allowed: set[str]) -> dict[str, str]:
    values = parse_qs(raw, keep_blank_values=True)
    if set(values) - allowed:
        # Never the unknown name: with an unencoded ? or & in a password, it is password text.
        accepted = f"query parameters may be {', '.join(sorted(allowed))}" if allowed else "no query parameters"
        raise _Reason(f"{accepted}; {_ENCODE_HINT}")
    return {name: items[-1] for name, items in values.items()}


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, has_password, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if has_password else None


def _hosts(hostlist: str, default_port: int | None) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for location in hostlist.split(","):
        part = urlsplit(f"//{location.strip()}")
        try:
            port = part.port
        except ValueError:
            port = 0
        if port == 0:  # urllib accepts 0, which no server listens on (and `port or default` would hide)
            raise _Reason("a port number 1-65535")
        chosen = default_port if port is None else port
        if not part.hostname or chosen is None:
            raise _Reason("host:port for every node")
        hosts.append((part.hostname, chosen))
    return tuple(hosts)


def _db(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6):
        raise _Reason("a database number like 0")
    return int(raw)
