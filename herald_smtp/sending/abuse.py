"""Abuse limits: the recipient allowlist and the rate limits, shared by every worker and replica.

    destination_refusal(to) -> None, or 400 invalid_destination: the domain is not in ALLOWED_RECIPIENT_DOMAINS
    admit(to)               -> None to send, or 429 rate_limited (RATE_LIMIT_PER_RECIPIENT, RATE_LIMIT_GLOBAL)
                               with Retry-After from the window, or 503 provider_down when the limiter's store
                               fails in IDEMPOTENCY_FAILURE_MODE=closed

service.py asks destination_refusal() before the claim (a 400 records nothing), and admit() only for a
request that is about to send: after the claim says Owned, or without a key, or unguarded. So replays and
the claim's refusals are never counted, and a denial releases the reservation (RATE_LIMITED is keep=False).

The limits come from the `limits` library on the same store as the idempotency records, built from the same
parsed REDIS_URL (Settings.redis_target) with the same timeouts (redis_clients.py): limits'
RedisStorage on that Redis's connection pool (one Redis, TLS, unix socket, or a Sentinel service's master:
reads go to the master too, since a lagging replica would let a full window through), its RedisClusterStorage
on a cluster, its MemoryStorage in this process otherwise. The storage is built at the first admit(): a
cluster client dials its nodes when it is built, and a cluster down at startup must not stop the worker.
Keys: REDIS_KEY_PREFIX + "ratelimit:" + "per_recipient/<hash>/5/60/second" or "global/5/60/second"; the
hash is an HMAC-SHA256 of the lower-cased address keyed by IDEMPOTENCY_SECRET (as fingerprint.py does),
so Redis never holds an address, and A@Example.com and a@example.com are one recipient.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from ..addresses import Mailbox
from ..config import FailureMode, Rate, Settings
from .. import redis_clients
from ..metrics import Metrics
from ..outcomes import Outcome, Result

log = logging.getLogger("herald_smtp.send")

_STORE_ERRORS = (*redis_clients.ERRORS, StorageError)


@dataclass(frozen=True)
class Limit:
    name: str  # the metric label: "per_recipient" or "global"
    variable: str
    rate: Rate
    item: RateLimitItem
    scope: str  # for the caller's message


def _limit(name: str, variable: str, rate: Rate | None, scope: str) -> Limit | None:
    if rate is None:
        return None
    # Per second, whatever the spelling: 5/minute and 5/60s are one key on every replica.
    return Limit(name, variable, rate, RateLimitItemPerSecond(rate.amount, rate.seconds, namespace=name), scope)


def open_storage(settings: Settings) -> Storage:
    """limits' storage on REDIS_URL's store: Redis in its topology (shared) or this process's memory."""
    target = settings.redis_target
    prefix = settings.redis_key_prefix + "ratelimit"
    if target is None:
        return MemoryStorage()
    # limits decodes its own replies: these clients must not.
    if target.topology == "cluster":
        return RedisClusterStorage(f"redis+cluster://{target.host_list}", key_prefix=prefix,
                                   **redis_clients.cluster_options(target, decode_responses=False))
    return RedisStorage("redis://", key_prefix=prefix,
                        connection_pool=redis_clients.connection_pool(target, decode_responses=False))


def recipient_id(to: Mailbox, secret: str) -> str:
    """The per-recipient key part: no address in clear, one value for every spelling of its case."""
    address = b"rate-limit\0" + str(to).lower().encode("utf-8")
    if secret:
        return hmac.new(secret.encode("utf-8"), address, hashlib.sha256).hexdigest()
    return hashlib.sha256(address).hexdigest()


class AbuseLimits:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.domains = frozenset(settings.allowed_recipient_domains)
        self.per_recipient = _limit("per_recipient", "RATE_LIMIT_PER_RECIPIENT", settings.rate_limit_per_recipient,
                                    "to this recipient")
        self.overall = _limit("global", "RATE_LIMIT_GLOBAL", settings.rate_limit_global, "for the whole service")
        # Moving window, not fixed: it never lets more than N through in any span of the window (a fixed window
        # lets 2N through around its boundary: 10 codes in two seconds for 5/60s), a denied request takes no
        # slot, and the oldest entry in the window says exactly when the next one is let through (Retry-After).
        # It costs one timestamp per send in the window (hence MAX_RATE_AMOUNT), written with the replica's clock.
        self.enabled = bool(self.per_recipient or self.overall)
        self._limiter: MovingWindowRateLimiter | None = None
        self._lock = threading.Lock()

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        """Built at the first use (see the module docstring); a failure raises one of _STORE_ERRORS."""
        if self._limiter is None:
            with self._lock:
                if self._limiter is None:
                    self._limiter = MovingWindowRateLimiter(open_storage(self.settings))
        return self._limiter

    def destination_refusal(self, to: Mailbox) -> Result | None:
        # The envelope's domain (str(to) is the address RCPT TO carries), compared without case.
        domain = str(to).rpartition("@")[2]
        if not self.domains or domain.lower() in self.domains:
            return None
        allowed = ", ".join(self.settings.allowed_recipient_domains)
        return Result(Outcome.INVALID_DESTINATION, f"recipient domain {domain} is not allowed: this service sends "
                                                   f"only to {allowed} (ALLOWED_RECIPIENT_DOMAINS)")

    def admit(self, to: Mailbox) -> Result | None:
        """Take a slot in each limit for this send: None to send, or the Result to answer instead."""
        if not self.enabled:
            return None
        try:
            return self._take_slots(to)
        except _STORE_ERRORS as exc:
            return self._store_down(exc)

    def _take_slots(self, to: Mailbox) -> Result | None:
        # A full global limit refuses before the recipient's slot is taken, so a flood cannot use up the
        # recipients' limits; the recipient's limit is taken before the global one, so a flood at one address is
        # stopped there and never eats into everyone's global limit.
        if self.overall and not self.limiter.test(self.overall.item):
            return self._deny(self.overall)
        if self.per_recipient:
            ids = recipient_id(to, self.settings.idempotency_secret)
            if not self.limiter.hit(self.per_recipient.item, ids):
                return self._deny(self.per_recipient, ids)
        # Filled between test() and here by another request: the recipient's slot stays taken (stricter, never looser).
        if self.overall and not self.limiter.hit(self.overall.item):
            return self._deny(self.overall)
        return None

    def _deny(self, limit: Limit, *ids: str) -> Result:
        reset = self.limiter.get_window_stats(limit.item, *ids).reset_time
        # Whole seconds until the oldest send in the window leaves it; at most the window (replicas' clocks differ).
        retry_after = min(limit.rate.seconds, max(1, math.ceil(reset - time.time())))
        self.metrics.rate_limited.labels(limit.name).inc()
        return Result(Outcome.RATE_LIMITED,
                      f"rate limit exceeded: {limit.variable} allows {limit.rate.amount} mails per "
                      f"{limit.rate.seconds}s {limit.scope}; retry after {retry_after}s",
                      retry_after=retry_after, limit=limit.variable)

    def _store_down(self, exc: Exception) -> Result | None:
        self.metrics.rate_limit_store_errors.inc()
        cause = f"rate limit store (Redis) unavailable: {type(exc).__name__}: {exc}"
        if self.settings.idempotency_failure_mode == FailureMode.CLOSED:
            log.error("rate limit store unavailable; refusing to send (IDEMPOTENCY_FAILURE_MODE=closed)",
                      extra={"cause": cause})
            return Result(Outcome.STORE_UNAVAILABLE, f"{cause}; not sending (closed mode)")
        log.error("rate limit store unavailable; sending without rate limits (IDEMPOTENCY_FAILURE_MODE=open)",
                  extra={"cause": cause})
        return None
