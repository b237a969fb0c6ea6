"""Redis idempotency store, shared by every worker and replica.

reserve: Lua SET key reservation PX hold if absent, else GET it (atomic: one winner per key, one round trip)
commit:  Lua compare-token-and-set to the committing record, SETEX with IDEMPOTENCY_TTL_SECONDS
finish:  Lua compare-token-and-set to the final record, SETEX with IDEMPOTENCY_TTL_SECONDS
release: Lua compare-token-and-delete
The reservation and the committing record hold the owner's random token, so
an owner whose reservation expired and was taken over cannot overwrite or
delete the newer one. Every script is safe to run twice (redis-py retries a
command once after a reset connection, and Redis may have run the first):
reserve recognises its own reservation, commit and finish a value already
written.

Cluster-safe: every script names its keys in KEYS, so a Redis Cluster routes
it to their slot; the one that touches two keys (finish with the message's
status record) is used on a single Redis only, and a Cluster writes the status
with a command of its own. The client
(herald_smtp/redis_clients.py) is built at the first operation: a cluster client dials
its nodes when it is built, and a cluster that is down at startup must cost a
StoreUnavailable (and IDEMPOTENCY_FAILURE_MODE), not a worker that cannot boot.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import threading
from typing import Any, Callable

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError
from redis.sentinel import SentinelConnectionPool

from .. import redis_clients
from .base import Claim, Record, StatusWrite, StoreUnavailable
from ..redis_target import RedisTarget, parse_redis_url

log = logging.getLogger("herald_smtp.store")

# Take the key, or read who has it: one round trip for a replay or a duplicate, not SET NX then GET
# (and no "expired in between" to loop on). Finding our own reservation means this call is redis-py's
# reconnect-and-retry of one that Redis already ran: the key is ours.
_RESERVE = """
local existing = redis.call('GET', KEYS[1])
if not existing then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
if existing == ARGV[1] then
  return false
end
return existing
"""

# reserve() that also reads the recipient's suppression entry (KEYS[2]) in the same round trip: {what the
# reserve returns, the entry}. Not on a Cluster, where the two keys live in different slots.
_RESERVE_AND_LOOK = """
local suppression = redis.call('GET', KEYS[2])
local existing = redis.call('GET', KEYS[1])
if not existing then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif existing == ARGV[1] then
  existing = false
end
return {existing, suppression}
"""

# The owner's token inside a record that is not done (reservation or committing record), or nil.
_TOKEN_OF = """
local function token_of(value)
  if not value then return nil end
  local ok, record = pcall(cjson.decode, value)
  if ok and type(record) == 'table' then return record['token'] end
  return nil
end
"""

# Compare-and-set: replace a record holding our token (reservation or committing record) and set its
# TTL. A key already holding the new value is a retried call that Redis ran: done, not "lost".
_REPLACE_BODY = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[2] then
  return 1
end
if token_of(current) == ARGV[1] then
  redis.call('SETEX', KEYS[1], ARGV[3], ARGV[2])
  return 1
end
return 0
"""
_REPLACE = _TOKEN_OF + _REPLACE_BODY

# finish() with the message's status record (KEYS[2]) in the same round trip. Not on a Cluster, where the two
# keys live in different slots: there the status is a command of its own.
_FINISH_WITH_STATUS = _TOKEN_OF + """
redis.call('SETEX', KEYS[2], ARGV[5], ARGV[4])
""" + _REPLACE_BODY

# Compare-and-delete on the token: frees the key whether the owner got as far as committing or not, which
# matters when a commit ran in Redis but its reply never arrived.
_RELEASE = _TOKEN_OF + """
if token_of(redis.call('GET', KEYS[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# add_event(): append an event (ARGV[1], JSON) to a message's status record (KEYS[1]), keeping its TTL, unless an
# event of the same notification is there already: a notification read twice (the reader died before moving
# it) is recorded once.
_ADD_EVENT = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'unknown' end
local record = cjson.decode(raw)
local event = cjson.decode(ARGV[1])
local events = record['events']
if type(events) ~= 'table' then events = {} end
for _, seen in ipairs(events) do
  if seen['notification_id'] == event['notification_id'] then return 'duplicate' end
end
table.insert(events, event)
record['events'] = events
redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
return 'added'
"""


def _encode(record: Record, token: str = "") -> str:
    data: dict[str, object] = {"fp": record.fingerprint}
    if record.done:
        data.update(status=record.status, body=record.body)
    else:
        data["token"] = token
    if record.committing and not record.done:
        data.update(committing=True, hold_until=record.hold_until)
    return _json(data)


def _json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


def _decode(raw: str | bytes) -> Record:
    data = json.loads(raw)
    return Record(data["fp"], data.get("status"), data.get("body"), data.get("committing", False),
                  data.get("hold_until"))


class _translate_errors:  # noqa: N801 - used as a function: `with _translate_errors():`
    """redis-py errors -> StoreUnavailable with the cause, for the failure mode to act on.

    A class, not @contextmanager: it wraps every store call, and a generator per call was a measurable
    share of a send's CPU (issue #25)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, traceback) -> None:
        if exc is not None and isinstance(exc, redis_clients.ERRORS):
            raise StoreUnavailable(f"idempotency store (Redis) unavailable: {type(exc).__name__}: {exc}") from None



RedisClient = redis.Redis | RedisCluster


def _same(client: RedisClient) -> RedisClient:
    return client


class _Lua:
    """One Lua script, run by EVALSHA through a client's execute_command (its retry and routing included).

    What redis-py's Script object does, with less work per call: a send runs three of these, and Script's own
    checks were a measurable share of a worker's CPU (issue #25). A server without the script (restarted,
    failed over) gets it loaded, then the call again.
    """

    def __init__(self, source: str):
        self._source = source
        self._sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def __call__(self, client: RedisClient, keys: list[str], args: list) -> Any:
        try:
            return client.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self._source)
            return client.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)


_SCRIPT_RESERVE = _Lua(_RESERVE)
_SCRIPT_RESERVE_AND_LOOK = _Lua(_RESERVE_AND_LOOK)  # a single Redis only: two keys
_SCRIPT_REPLACE = _Lua(_REPLACE)
_SCRIPT_FINISH_WITH_STATUS = _Lua(_FINISH_WITH_STATUS)  # a single Redis only: two keys
_SCRIPT_RELEASE = _Lua(_RELEASE)
_SCRIPT_ADD_EVENT = _Lua(_ADD_EVENT)


class RedisStore:
    name = "redis"

    def __init__(self, client: RedisClient | None = None, prefix: str = "", *,
                 connect: Callable[[], RedisClient] | None = None):
        """A store on `client`, or on the client that `connect()` builds at the first operation."""
        if connect is None:
            if client is None:
                raise TypeError("RedisStore needs a client or a connect function")
            connect = functools.partial(_same, client)
        self._connect = connect
        self._prefix = prefix + "idempotency:"
        self._status_prefix = prefix + "message:"
        self._suppression_prefix = prefix + "suppression:"
        self._lock = threading.Lock()
        self._shared: RedisClient | None = None
        self._of_thread = threading.local()

    @classmethod
    def from_target(cls, target: RedisTarget, prefix: str) -> "RedisStore":
        return cls(prefix=prefix, connect=lambda: redis_clients.client(target))

    @classmethod
    def from_url(cls, url: str, prefix: str) -> "RedisStore":
        target = parse_redis_url(url)
        if target is None:
            raise ValueError("a Redis URL, not the in-process store's")
        return cls.from_target(target, prefix)

    def _shared_client(self) -> RedisClient:
        if self._shared is None:
            with self._lock:
                if self._shared is None:
                    self._shared = self._connect()
        return self._shared

    @property
    def _redis(self) -> RedisClient:
        """This thread's client, made at its first operation (a Cluster client dials its nodes then).

        On a single Redis, a client holding one connection of the shared pool for as long as the thread lives
        (single_connection_client): a send runs three commands, and taking a connection from the pool and giving
        it back around each was a third of each command's CPU (issue #25). Its commands keep redis-py's retry,
        health check and reconnection. Shared on a Cluster (the client routes each key to its node) and behind
        Sentinel: after a failover, the pool hands every thread the connection that found the new master, where
        threads of their own would each ask the sentinels again, some of which may not have seen it yet.
        """
        of_thread = self._of_thread
        if getattr(of_thread, "pid", None) == os.getpid():  # a forked worker must not use its parent's socket
            return of_thread.client
        shared = self._shared_client()
        if isinstance(shared, RedisCluster) or isinstance(shared.connection_pool, SentinelConnectionPool):
            client: RedisClient = shared
        else:
            client = redis.Redis(connection_pool=shared.connection_pool, single_connection_client=True)
        of_thread.client, of_thread.pid = client, os.getpid()
        return client

    def reserve(self, key: str, fingerprint: str, hold_seconds: float, suppression: str | None = None) -> Claim:
        token = secrets.token_hex(16)
        reservation = _encode(Record(fingerprint), token)
        args = [reservation, max(1, int(hold_seconds * 1000))]
        with _translate_errors():  # the first operation builds the client: a Cluster client dials its nodes
            client = self._redis
        entry: dict | None = None
        if suppression is not None and not isinstance(client, RedisCluster):
            with _translate_errors():
                existing, suppressed = _SCRIPT_RESERVE_AND_LOOK(
                    client, [self._prefix + key, self._suppression_prefix + suppression], args)
            entry = None if suppressed is None else json.loads(suppressed)
        else:
            with _translate_errors():
                existing = _SCRIPT_RESERVE(client, [self._prefix + key], args)
            if suppression is not None:  # a Cluster: the entry lives in another slot, maybe on another node
                entry = self._on_another_node(lambda: self.get_suppression(suppression), "suppression lookup")
        if existing is None:
            return Claim(key, token=token, suppression=entry)
        return Claim(key, existing=_decode(existing), suppression=entry)

    def commit(self, claim: Claim, record: Record, ttl_seconds: int) -> Claim | None:
        # The committing record keeps the reservation's token: one token frees or finishes the key in
        # either state, even when the commit ran in Redis and its reply was lost.
        return claim if self._replace_with(claim, _encode(record, str(claim.token)), ttl_seconds) else None

    def finish(self, claim: Claim, record: Record, ttl_seconds: int, status: StatusWrite | None = None) -> bool:
        final = _encode(record)
        if status is None:
            return self._replace_with(claim, final, ttl_seconds)
        with _translate_errors():
            client = self._redis
        if isinstance(client, RedisCluster):  # two slots, two commands; the final record first, it protects the key
            finished = self._replace_with(claim, final, ttl_seconds)
            self._on_another_node(lambda: self.put_status(status), "message status write")
            return finished
        keys = [self._prefix + claim.key, self._status_prefix + status.message_id]
        args = [claim.token, final, int(ttl_seconds), _json(status.record), int(status.ttl_seconds)]
        with _translate_errors():
            return bool(_SCRIPT_FINISH_WITH_STATUS(client, keys, args))

    @staticmethod
    def _on_another_node(call: Callable, what: str):
        """On a Cluster, the status and suppression keys may live on another node than the key's: a failure there
        must not fail the reservation or the final record, which are the guarantee. Logged, then None."""
        try:
            return call()
        except StoreUnavailable as exc:
            log.warning(f"{what} failed on another Redis Cluster node; going on without it",
                        extra={"cause": str(exc)})
            return None

    def release(self, claim: Claim) -> bool:
        with _translate_errors():
            return bool(_SCRIPT_RELEASE(self._redis, [self._prefix + claim.key], [claim.token]))

    def _replace_with(self, claim: Claim, value: str, ttl_seconds: int) -> bool:
        with _translate_errors():
            return bool(_SCRIPT_REPLACE(self._redis, [self._prefix + claim.key],
                                        [claim.token, value, int(ttl_seconds)]))

    def put_status(self, status: StatusWrite) -> None:
        with _translate_errors():
            self._redis.set(self._status_prefix + status.message_id, _json(status.record),
                            ex=int(status.ttl_seconds))

    def get_status(self, message_id: str) -> dict | None:
        with _translate_errors():
            value = self._redis.get(self._status_prefix + message_id)
        return None if value is None else json.loads(value)

    def add_event(self, message_id: str, event: dict) -> str:
        with _translate_errors():
            added = _SCRIPT_ADD_EVENT(self._redis, [self._status_prefix + message_id], [_json(event)])
        return added.decode() if isinstance(added, bytes) else str(added)

    def get_suppression(self, key: str) -> dict | None:
        with _translate_errors():
            value = self._redis.get(self._suppression_prefix + key)
        return None if value is None else json.loads(value)

    def suppress(self, key: str, entry: dict, ttl_seconds: int) -> None:
        with _translate_errors():
            self._redis.set(self._suppression_prefix + key, _json(entry), ex=int(ttl_seconds))

    def unsuppress(self, key: str) -> bool:
        with _translate_errors():
            return bool(self._redis.delete(self._suppression_prefix + key))

    def suppressions(self, limit: int) -> list[dict]:
        found: list[dict] = []
        with _translate_errors():
            for name in self._redis.scan_iter(match=self._suppression_prefix + "*", count=500):
                value = self._redis.get(name)
                if value is not None:
                    found.append(json.loads(value))
                if len(found) >= limit:
                    break
        return found

    def get(self, key: str) -> Record | None:
        with _translate_errors():
            value = self._redis.get(self._prefix + key)
        return None if value is None else _decode(value)

    def ping(self) -> None:
        with _translate_errors():
            self._redis.ping()
