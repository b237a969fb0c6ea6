"""redis-py clients for a RedisTarget: one Redis, a Sentinel master or a Redis Cluster.

The idempotency store (idempotency/redis.py) and the rate limiter (sending/abuse.py) both build theirs here,
from the one RedisTarget parsed out of REDIS_URL, so they always reach the same Redis with the same timeouts.

Time limits: a node that stops answering costs one socket timeout, never a multiple of it. redis-py's default
Retry repeats a timed-out command three times with backoff, so every client here retries only a refused or
reset connection, once and at once (that is how a pooled connection notices a restarted server, or a
Sentinel client finds the new master), and never a timeout. The cluster client does not retry at all: its
retry loop treats a timeout like a refused connection.
"""

from __future__ import annotations

import ssl

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from .redis_target import RedisTarget

# Short socket timeouts: a hung Redis must fail fast into IDEMPOTENCY_FAILURE_MODE,
# not eat the request's SMTP budget.
SOCKET_TIMEOUT = 2.0
HEALTH_CHECK_INTERVAL = 30

# What a caller catches as "the store is down": RedisCluster raises RedisClusterException (not a RedisError)
# when no startup node answers.
ERRORS = (redis.RedisError, RedisClusterException)


class _ReconnectOnce(Retry):
    """Retry a refused or reset connection once, at once; never a timeout, nor a Sentinel master lookup that
    found none (each silent sentinel has already cost its timeout: asking them all again would double it)."""

    def __init__(self):
        super().__init__(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error: Exception) -> bool:
            return not isinstance(error, MasterNotFoundError) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def _retry() -> Retry:
    return _ReconnectOnce()


def _connection_options(target: RedisTarget, decode_responses: bool) -> dict:
    return dict(
        username=target.username,
        password=target.password,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        decode_responses=decode_responses,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )


def _tls_options(target: RedisTarget) -> dict:
    """redis-py's SSLConnection arguments: verified by default, REDIS_TLS_CA_FILE added to the system's CAs."""
    return dict(
        ssl_cert_reqs=ssl.CERT_REQUIRED if target.tls_verify else ssl.CERT_NONE,
        ssl_check_hostname=target.tls_verify,
        ssl_ca_certs=target.tls_ca_file or None,  # redis-py loads it into a default context: added, not instead
    )


def connection_pool(target: RedisTarget, decode_responses: bool = True) -> redis.ConnectionPool:
    """The pool of a single Redis (TCP, TLS or unix socket) or of a Sentinel service's current master."""
    options = _connection_options(target, decode_responses)
    if target.topology == "sentinel":
        sentinel = Sentinel(
            list(target.hosts),
            sentinel_kwargs=dict(password=target.sentinel_password, socket_timeout=SOCKET_TIMEOUT,
                                 socket_connect_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0)),
            db=target.db, retry=_retry(), **options,
        )
        # The master's pool asks the sentinels for the master at each new connection: after a failover the
        # old connections fail (refused, or READONLY on a demoted master) and the retry reaches the new one.
        return sentinel.master_for(target.service_name).connection_pool
    if target.topology == "unix":
        return redis.ConnectionPool(connection_class=redis.UnixDomainSocketConnection, path=target.path,
                                    db=target.db, retry=_retry(), **options)
    (host, port), = target.hosts
    if target.tls:
        options.update(_tls_options(target), connection_class=redis.SSLConnection)
    return redis.ConnectionPool(host=host, port=port, db=target.db, retry=_retry(), **options)


def cluster_options(target: RedisTarget, decode_responses: bool = True) -> dict:
    """RedisCluster's keyword arguments (limits' RedisClusterStorage takes the same)."""
    options = _connection_options(target, decode_responses)
    return dict(startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
                retry=Retry(NoBackoff(), 0), **options)


def client(target: RedisTarget, decode_responses: bool = True) -> redis.Redis | RedisCluster:
    """A client for the target. A cluster client connects here (to learn the slots), the others lazily."""
    if target.topology == "cluster":
        return RedisCluster(**cluster_options(target, decode_responses))
    return redis.Redis(connection_pool=connection_pool(target, decode_responses))
