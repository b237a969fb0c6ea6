"""Redis idempotency store, shared by every worker and replica.

reserve: Lua SET key reservation NX PX hold, else GET it (atomic: one winner per key, one round trip)
commit:  Lua compare-and-set to the committing record, SETEX with IDEMPOTENCY_TTL_SECONDS
finish:  Lua compare-and-set, then SETEX with IDEMPOTENCY_TTL_SECONDS
release: Lua compare-and-delete
The reservation value holds a random token, so an owner whose reservation
expired and was taken over cannot overwrite or delete the newer one.

Cluster-safe: every operation touches exactly one key, and each script names
it in KEYS[1], so a Redis Cluster routes it to the key's slot. The client
(redis_clients.py) is built at the first operation: a cluster client dials
its nodes when it is built, and a cluster that is down at startup must cost a
StoreUnavailable (and IDEMPOTENCY_FAILURE_MODE), not a worker that cannot boot.
"""

from __future__ import annotations

import json
import secrets
import threading
from contextlib import contextmanager
from typing import Callable

import redis

from .. import redis_clients
from .base import Claim, Record, StoreUnavailable
from ..redis_target import RedisTarget, parse_redis_url

# Take the key, or read who has it: one round trip for a replay or a duplicate, not SET NX then GET
# (and no "expired in between" to loop on).
_RESERVE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1])
"""

# Compare-and-set: replace our own value (reservation or committing record) and set its TTL.
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SETEX', KEYS[1], ARGV[3], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _encode(record: Record, token: str = "") -> str:
    data = {"fp": record.fingerprint}
    if record.done:
        data.update(status=record.status, body=record.body)
    else:
        data["token"] = token
    if record.committing and not record.done:
        data.update(committing=True, hold_until=record.hold_until)
    return json.dumps(data, separators=(",", ":"))


def _decode(raw: str) -> Record:
    data = json.loads(raw)
    return Record(data["fp"], data.get("status"), data.get("body"), data.get("committing", False),
                  data.get("hold_until"))


@contextmanager
def _translate_errors():
    """redis-py errors -> StoreUnavailable with the cause, for the failure mode to act on."""
    try:
        yield
    except redis_clients.ERRORS as exc:
        raise StoreUnavailable(f"idempotency store (Redis) unavailable: {type(exc).__name__}: {exc}") from None


class RedisStore:
    name = "redis"

    def __init__(self, client: redis.Redis | None = None, prefix: str = "", *,
                 connect: Callable[[], redis.Redis] | None = None):
        """A store on `client`, or on the client that `connect()` builds at the first operation."""
        self._connect = connect or (lambda: client)
        self._prefix = prefix + "idempotency:"
        self._lock = threading.Lock()
        self._bound: tuple | None = None  # (client, reserve, replace and release scripts)

    @classmethod
    def from_target(cls, target: RedisTarget, prefix: str) -> "RedisStore":
        return cls(prefix=prefix, connect=lambda: redis_clients.client(target))

    @classmethod
    def from_url(cls, url: str, prefix: str) -> "RedisStore":
        return cls.from_target(parse_redis_url(url), prefix)

    @property
    def _redis(self) -> redis.Redis:
        return self._scripts()[0]

    def _scripts(self) -> tuple:
        if self._bound is None:
            with self._lock:
                if self._bound is None:
                    client = self._connect()
                    self._bound = (client, client.register_script(_RESERVE), client.register_script(_REPLACE),
                                   client.register_script(_RELEASE))
        return self._bound

    def _reserve(self, keys, args):
        return self._scripts()[1](keys=keys, args=args)

    def _replace(self, keys, args):
        return self._scripts()[2](keys=keys, args=args)

    def _release(self, keys, args):
        return self._scripts()[3](keys=keys, args=args)

    def reserve(self, key: str, fingerprint: str, hold_seconds: float) -> Claim:
        # The claim's token is the exact value written: the scripts compare against it.
        reservation = _encode(Record(fingerprint), token=secrets.token_hex(16))
        hold_ms = max(1, int(hold_seconds * 1000))
        with _translate_errors():
            existing = self._reserve(keys=[self._prefix + key], args=[reservation, hold_ms])
        return Claim(key, token=reservation) if existing is None else Claim(key, existing=_decode(existing))

    def commit(self, claim: Claim, record: Record, ttl_seconds: int) -> Claim | None:
        committing = _encode(record, token=secrets.token_hex(16))
        with _translate_errors():
            keys, args = [self._prefix + claim.key], [claim.token, committing, int(ttl_seconds)]
            return Claim(claim.key, token=committing) if self._replace(keys=keys, args=args) else None

    def finish(self, claim: Claim, record: Record, ttl_seconds: int) -> bool:
        with _translate_errors():
            keys, args = [self._prefix + claim.key], [claim.token, _encode(record), int(ttl_seconds)]
            return bool(self._replace(keys=keys, args=args))

    def release(self, claim: Claim) -> bool:
        with _translate_errors():
            return bool(self._release(keys=[self._prefix + claim.key], args=[claim.token]))

    def get(self, key: str) -> Record | None:
        with _translate_errors():
            value = self._redis.get(self._prefix + key)
        return None if value is None else _decode(value)

    def ping(self) -> None:
        with _translate_errors():
            self._redis.ping()
