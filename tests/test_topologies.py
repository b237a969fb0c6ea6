"""Exactly once and the rate limits on every Redis topology REDIS_URL can name (tests/support/redis_topologies.py).

On a 3-master cluster, a Sentinel set (master, replica, three sentinels), TLS (a verifying client through a
TLS proxy) and a unix socket: the foundation's concurrency test (20 keys x 10 simultaneous duplicates, sent
alternately to two gunicorn masters with several workers each), the rate limits shared by two replicas, and
what is particular to each topology (keys spread over the cluster's masters, a silent cluster master failing
only its own keys into the failure mode, the service following a Sentinel failover, TLS refused without the
CA).

Slow (the servers and four gunicorn masters per topology): marked `topologies`, run by `make test-topologies`
(part of `make test-all` and CI), not by `make test`.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import pytest
import redis

from herald_smtp.config import settings_from
from herald_smtp import redis_clients
from tests.support.client import assert_error, post, send, smtp_env
from tests.support.herald_process import HeraldProcess
from tests.support.net import LOCALHOST
from tests.support.redis_topologies import RedisCluster, RedisSentinelSet, TlsRedis, UnixRedis
from tests.test_e2e import DUPLICATES, KEYS, assert_one_mail_per_key

pytestmark = pytest.mark.topologies

TOPOLOGIES = ["cluster", "sentinel", "tls", "unix"]


@dataclass
class Topology:
    """What a test needs of a running topology: the service's environment and a look at the keys."""

    name: str
    env: dict[str, str]
    keys: Callable[[], list[str]]
    flush: Callable[[], None]
    server: object = field(repr=False, default=None)


def _cluster(tmp) -> tuple[Topology, object]:
    server = RedisCluster(tmp / "cluster").start()

    def keys():
        return sorted(k for node_keys in server.keys_by_node().values() for k in node_keys)

    return Topology("cluster", {"REDIS_URL": server.url}, keys, server.flushall, server), server


def _sentinel(tmp) -> tuple[Topology, object]:
    server = RedisSentinelSet(tmp / "sentinel").start()

    def keys():
        with server.data_client() as client:
            return sorted(client.keys("*"))

    def flush():
        with server.data_client() as client:
            client.flushall()

    return Topology("sentinel", {"REDIS_URL": server.url}, keys, flush, server), server


def _tls(tmp) -> tuple[Topology, object]:
    server = TlsRedis(tmp / "tls").start()

    def keys():
        with server.plain_client() as client:
            return sorted(client.keys("*"))

    def flush():
        with server.plain_client() as client:
            client.flushall()

    env = {"REDIS_URL": server.url, "REDIS_TLS_CA_FILE": str(server.ca_file)}
    return Topology("tls", env, keys, flush, server), server


def _unix(tmp) -> tuple[Topology, object]:
    server = UnixRedis().start()

    def keys():
        with server.client() as client:
            return sorted(client.keys("*"))

    def flush():
        with server.client() as client:
            client.flushall()

    return Topology("unix", {"REDIS_URL": server.url}, keys, flush, server), server


_STARTERS = {"cluster": _cluster, "sentinel": _sentinel, "tls": _tls, "unix": _unix}


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request, tmp_path_factory):
    try:
        found, server = _STARTERS[request.param](tmp_path_factory.mktemp(request.param))
    except RuntimeError as exc:  # a server that cannot start fails the test with its reason
        pytest.fail(f"{request.param} topology did not start: {exc}", pytrace=False)
    try:
        yield found
    finally:
        server.stop()


@pytest.fixture
def redis_env(topology) -> dict[str, str]:
    topology.flush()
    return dict(topology.env)


def fire_duplicates_alternately(urls: list[str]) -> dict[str, list[tuple[int, dict, bool]]]:
    """KEYS keys x DUPLICATES identical requests, all in flight at once, each sent to the next service."""
    jobs = [(f"key-{k}", {"to": f"user{k}@example.com", "params": {"code": f"C{k:04d}"}})
            for k in range(KEYS) for _ in range(DUPLICATES)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda i: post(urls[i % len(urls)], jobs[i][1], {"Idempotency-Key": jobs[i][0]}),
                                range(len(jobs))))
    by_key: dict[str, list[tuple[int, dict, bool]]] = {}
    for (key, _), (status, body, headers) in zip(jobs, answers, strict=True):
        by_key.setdefault(key, []).append((status, body, headers.get("Idempotent-Replayed") == "true"))
    return by_key


@pytest.mark.timeout(300)
def test_duplicates_across_two_services_send_exactly_one_mail_per_key(tmp_path, smtp, topology, redis_env):
    smtp.inject("message", delay=0.2)  # keep the originals in flight while the duplicates arrive
    env = smtp_env(smtp) | redis_env | {"WEB_CONCURRENCY": "3", "WEB_THREADS": "16"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with HeraldProcess(tmp_path / "a", env) as first, HeraldProcess(tmp_path / "b", env) as second:
        by_key = fire_duplicates_alternately([first.url, second.url])
        logs = [first.log_text(), second.log_text()]
    described = {"cluster": "Redis Cluster via startup nodes 127.0.0.1:", "sentinel": "Sentinel service herald via "
                 "sentinels 127.0.0.1:", "tls": "single Redis at localhost:", "unix": "single Redis on unix socket /"}
    for log in logs:
        assert log.count("Booting worker") == 3
        startup = next(json.loads(line) for line in log.splitlines() if '"starting herald-smtp"' in line)
        assert startup["config"]["redis"].startswith(described[topology.name]), startup["config"]["redis"]
    assert_one_mail_per_key(by_key, smtp)
    keys = topology.keys()
    assert sorted(k for k in keys if k.startswith("herald-smtp:idempotency:")) == sorted(
        f"herald-smtp:idempotency:key-{k}" for k in range(KEYS))


def test_the_rate_limits_are_shared_by_two_replicas(smtp, make_client, topology, redis_env):
    env = smtp_env(smtp) | redis_env | {"RATE_LIMIT_PER_RECIPIENT": "2/60s", "RATE_LIMIT_GLOBAL": "3/60s"}
    first, second = make_client(settings_from(env)), make_client(settings_from(env))
    assert send(first, {"to": "a@example.com"}).status_code == 200
    assert send(second, {"to": "a@example.com"}).status_code == 200
    assert_error(send(first, {"to": "a@example.com", "idempotency_key": "k-limited"}), 429, "rate_limited")
    assert send(second, {"to": "b@example.com"}).status_code == 200
    denied = send(first, {"to": "c@example.com"})
    assert_error(denied, 429, "rate_limited")
    assert "RATE_LIMIT_GLOBAL" in denied.get_json()["error_message"]
    assert len(smtp.messages) == 3
    keys = topology.keys()
    assert "herald-smtp:ratelimit:global/3/60/second" in keys
    assert sum(k.startswith("herald-smtp:ratelimit:per_recipient/") for k in keys) == 2
    assert "herald-smtp:idempotency:k-limited" not in keys  # a denial releases the key


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
def test_cluster_keys_land_on_more_than_one_master(smtp, make_client, topology, redis_env):
    client = make_client(settings_from(smtp_env(smtp) | redis_env | {"RATE_LIMIT_PER_RECIPIENT": "5/60s"}))
    for i in range(12):
        assert send(client, {"to": f"user{i}@example.com", "idempotency_key": f"spread-{i}"}).status_code == 200
    by_node = topology.server.keys_by_node("herald-smtp:*")
    holding = [port for port, keys in by_node.items() if any(":idempotency:spread-" in k for k in keys)]
    assert len(holding) >= 2, by_node
    limits = [port for port, keys in by_node.items() if any(":ratelimit:per_recipient/" in k for k in keys)]
    assert len(limits) >= 2, by_node


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
def test_a_silent_cluster_master_fails_only_its_keys_into_closed_mode(smtp, make_client, topology, redis_env,
                                                                      monkeypatch):
    monkeypatch.setattr(redis_clients, "SOCKET_TIMEOUT", 0.5)  # quicker; each key costs one timeout at most
    env = smtp_env(smtp) | redis_env | {"IDEMPOTENCY_FAILURE_MODE": "closed", "IDEMPOTENCY_WAIT_SECONDS": "1"}
    client = make_client(settings_from(env))
    assert send(client, {"to": "a@example.com", "idempotency_key": "warm-up"}).status_code == 200
    silent = topology.server.processes[1]
    os.kill(silent.pid, signal.SIGSTOP)  # it keeps its connections open and answers nothing
    try:
        statuses = {f"s-{i}": send(client, {"to": "a@example.com", "idempotency_key": f"s-{i}"}).status_code
                    for i in range(12)}
    finally:
        os.kill(silent.pid, signal.SIGCONT)
    on_silent = {key for key in statuses if _slot_owner(topology.server, key) == silent.port}
    assert on_silent and len(on_silent) < len(statuses)
    assert {key for key, status in statuses.items() if status == 503} == on_silent
    assert {key for key, status in statuses.items() if status == 200} == set(statuses) - on_silent
    # The node is back. It may have run a reservation that waited in its socket when it stopped: that key then
    # stays reserved for its hold (409, as on one Redis); never a second mail.
    retries = [send(client, {"to": "a@example.com", "idempotency_key": key}).status_code for key in on_silent]
    assert set(retries) <= {200, 409}
    assert len(smtp.messages) == 1 + len(statuses) - len(on_silent) + retries.count(200)


def _slot_owner(cluster: RedisCluster, key: str) -> int:
    """The port of the master that serves `key` (as the service stores it)."""
    with redis.Redis(host=LOCALHOST, port=cluster.ports[0], decode_responses=True) as client:
        slot = client.cluster("KEYSLOT", f"herald-smtp:idempotency:{key}")
        for start, end, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return master[1]  # [host, port, node id]
    raise AssertionError(f"no master serves slot {slot}")


@pytest.mark.parametrize("topology", ["tls"], indirect=True)
def test_tls_is_verified_against_the_ca_file_only(smtp, make_client, topology, redis_env):
    without_ca = {k: v for k, v in redis_env.items() if k != "REDIS_TLS_CA_FILE"}
    refused = make_client(settings_from(smtp_env(smtp) | without_ca | {"IDEMPOTENCY_FAILURE_MODE": "closed"}))
    response = send(refused, {"to": "a@example.com", "idempotency_key": "k-unverified"})
    assert_error(response, 503, "provider_down", "CERTIFICATE_VERIFY_FAILED")  # the store's cause, named
    unverified = make_client(settings_from(smtp_env(smtp) | without_ca | {"REDIS_TLS_VERIFY": "false"}))
    assert send(unverified, {"to": "a@example.com", "idempotency_key": "k-tests-only"}).status_code == 200
    verified = make_client(settings_from(smtp_env(smtp) | redis_env))
    assert send(verified, {"to": "a@example.com", "idempotency_key": "k-tests-only"}).headers[
        "Idempotent-Replayed"] == "true"
    assert len(smtp.messages) == 1


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.timeout(180)
def test_the_service_follows_a_sentinel_failover_without_a_restart(tmp_path, smtp):
    with RedisSentinelSet(tmp_path / "sentinel") as sentinels:
        env = smtp_env(smtp) | {"REDIS_URL": sentinels.url, "IDEMPOTENCY_FAILURE_MODE": "closed",
                                "WEB_CONCURRENCY": "2", "WEB_THREADS": "4"}
        (tmp_path / "svc").mkdir()
        with HeraldProcess(tmp_path / "svc", env) as service:
            assert post(service.url, {"to": "a@example.com"}, {"Idempotency-Key": "before"})[0] == 200
            old_master = sentinels.master.port
            sentinels.master.kill()  # SIGKILL: no shutdown, the sentinels must notice and promote the replica
            deadline = time.monotonic() + 60
            while sentinels.master_port() == old_master:
                assert time.monotonic() < deadline, "the sentinels did not promote the replica within 60s"
                time.sleep(0.2)
            deadline = time.monotonic() + 30
            while (status := post(service.url, {"to": "b@example.com"}, {"Idempotency-Key": "after"})[0]) != 200:
                assert status == 503 and time.monotonic() < deadline, status
                time.sleep(0.2)
            assert readyz(service.url) == 200
            assert post(service.url, {"to": "b@example.com"}, {"Idempotency-Key": "after"})[2].get(
                "Idempotent-Replayed") == "true"
        assert sentinels.master_port() == sentinels.replica.port
        with sentinels.data_client() as client:
            assert client.get("herald-smtp:idempotency:after") is not None
    assert len(smtp.messages) == 2
