"""REDIS_URL in every topology: what parses, what stops startup (one line, no password), what is shown.

Fast: nothing here dials a server (the clients connect at their first command). The servers behind each
form are in tests/test_topologies.py.
"""

from __future__ import annotations

import redis
import pytest
from limits.storage import RedisStorage
from redis.sentinel import SentinelConnectionPool

from herald_smtp.config import ConfigError, settings_from
from herald_smtp import redis_clients
from herald_smtp.idempotency.base import StoreUnavailable
from herald_smtp.idempotency.redis import RedisStore
from herald_smtp.idempotency.store import open_store
from herald_smtp.redis_target import RedisTarget
from herald_smtp.sending.abuse import open_storage

SENTINEL_FORM = "redis+sentinel://[:password@]host:port[,host:port...]/SERVICE_NAME[?db=N&sentinel_password=...]"
CLUSTER_FORM = "redis+cluster://[:password@]host:port[,host:port...]"
SINGLE_FORM = "redis://[[user]:password@]host[:port][/db]"


def target(url: str, **env) -> RedisTarget:
    return settings_from({"REDIS_URL": url, **env}).redis_target


def config_error(env: dict) -> str:
    with pytest.raises(ConfigError) as err:
        settings_from(env)
    return str(err.value)


@pytest.mark.parametrize("url, expected", [
    ("redis://:p%40ss@cache.internal:6380/2",
     RedisTarget("single", (("cache.internal", 6380),), db=2, password="p@ss")),
    ("redis://app:pw@10.0.0.5", RedisTarget("single", (("10.0.0.5", 6379),), username="app", password="pw")),
    ("redis://[::1]:6379?db=3", RedisTarget("single", (("::1", 6379),), db=3)),
    ("rediss://:pw@redis.example.com:6380/0",
     RedisTarget("single", (("redis.example.com", 6380),), password="pw", tls=True)),
    ("unix:///run/redis/redis.sock?db=4", RedisTarget("unix", path="/run/redis/redis.sock", db=4)),
    ("redis+sentinel://:pw@s1:26379,s2:26380,[::1]:26381/herald?db=1&sentinel_password=spw",
     RedisTarget("sentinel", (("s1", 26379), ("s2", 26380), ("::1", 26381)), db=1, password="pw",
                 service_name="herald", sentinel_password="spw")),
    ("redis+cluster://:pw@n1:7000,n2:7001", RedisTarget("cluster", (("n1", 7000), ("n2", 7001)), password="pw")),
])
def test_each_form_parses_into_one_target(url, expected):
    assert target(url) == expected


@pytest.mark.parametrize("url, message", [
    ("memcached://127.0.0.1:11211", "a URL starting with memory://, redis://, rediss://, unix://, "
                                    "redis+sentinel:// or redis+cluster://"),
    ("redis+sentinel://:pw@s1:26379,s2:26379", f"{SENTINEL_FORM} (the service name is missing)"),
    ("redis+sentinel://s1:26379/", f"{SENTINEL_FORM} (the service name is missing)"),
    ("redis+sentinel://s1/herald", f"{SENTINEL_FORM} (host:port for every node)"),
    ("redis+sentinel://s1:26379/herald?ssl=true", f"{SENTINEL_FORM} (query parameters may be db, sentinel_password; "
                                                  "percent-encode ? & # / in a password)"),
    ("redis+cluster://:pw@n1:7000,n2", f"{CLUSTER_FORM} (host:port for every node)"),
    ("redis+cluster://n1:7000/0", f"{CLUSTER_FORM} (a cluster has no database number or path)"),
    ("redis://:pw@a:1,b:2", f"{SINGLE_FORM} (one host)"),
    ("redis://:pw@host:99999/0", f"{SINGLE_FORM} (a port number 1-65535)"),
    ("redis://:pw@host/zero", f"{SINGLE_FORM} (a database number like 0)"),
    ("redis://host?socket_timeout=5", f"{SINGLE_FORM} (query parameters may be db, password; "
                                      "percent-encode ? & # / in a password)"),
    ("redis+cluster://n1:7000?db=1", f"{CLUSTER_FORM} (no query parameters; percent-encode ? & # / in a password)"),
    ("unix://host/x.sock", "unix:///path/to/redis.sock[?db=N]"),
])
def test_a_bad_url_stops_startup_with_one_line_naming_redis_url_and_the_form(url, message):
    error = config_error({"REDIS_URL": url})
    assert error == f"REDIS_URL: expected {message}"
    assert "\n" not in error and "pw" not in error.replace("password", "")


@pytest.mark.parametrize("env, variable", [
    ({"REDIS_URL": "redis://h:6379", "REDIS_TLS_VERIFY": "false"}, "REDIS_TLS_VERIFY"),
    ({"REDIS_URL": "redis+cluster://h:7000", "REDIS_TLS_CA_FILE": "/etc/ssl/certs/ca-certificates.crt"},
     "REDIS_TLS_CA_FILE"),
    ({"REDIS_TLS_VERIFY": "false"}, "REDIS_TLS_VERIFY"),
])
def test_tls_options_on_a_url_without_tls_stop_startup(env, variable):
    assert config_error(env) == (f"{variable}: expected only with a rediss:// REDIS_URL "
                                 "(rediss://[[user]:password@]host[:port][/db]); REDIS_URL has no TLS")


def test_an_unreadable_ca_file_stops_startup(tmp_path):
    assert config_error({"REDIS_URL": "rediss://h", "REDIS_TLS_CA_FILE": str(tmp_path / "none.pem")}) == (
        "REDIS_TLS_CA_FILE: expected the path of a readable PEM CA bundle")


def test_tls_is_verified_by_default_and_the_ca_file_is_added(tmp_path):
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    default = target("rediss://h")
    assert default.tls and default.tls_verify and not default.tls_ca_file
    pool = redis_clients.connection_pool(target("rediss://h", REDIS_TLS_CA_FILE=str(tmp_path / "ca.pem")))
    connection = pool.make_connection()
    assert isinstance(connection, redis.SSLConnection)
    assert connection.check_hostname and connection.ca_certs == str(tmp_path / "ca.pem")
    unverified = redis_clients.connection_pool(target("rediss://h", REDIS_TLS_VERIFY="false")).make_connection()
    assert not unverified.check_hostname


@pytest.mark.parametrize("url, shown, described", [
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0", "single Redis at h:6379, db 0, no TLS"),
    ("rediss://app:s3cret@h:6380", "rediss://app:***@h:6380", "single Redis at h:6380, db 0, TLS"),
    ("unix:///run/r.sock?db=1&password=s3cret", "unix:///run/r.sock?db=1&password=***",
     "single Redis on unix socket /run/r.sock, db 1"),
    ("redis+sentinel://:s3cret@s1:26379,s2:26379/herald?sentinel_password=s3cret",
     "redis+sentinel://:***@s1:26379,s2:26379/herald?sentinel_password=***",
     "Sentinel service herald via sentinels s1:26379,s2:26379, db 0"),
    ("redis+cluster://:s3cret@n1:7000,n2:7001", "redis+cluster://:***@n1:7000,n2:7001",
     "Redis Cluster via startup nodes n1:7000,n2:7001"),
])
def test_the_startup_line_shows_topology_and_hosts_never_the_password(url, shown, described):
    settings = settings_from({"REDIS_URL": url})
    config = settings.redacted()
    assert config["redis_url"] == shown and config["redis"] == described
    assert "s3cret" not in str(config) and "s3cret" not in repr(settings.redis_target)


def test_the_startup_line_warns_when_redis_tls_is_not_verified(caplog):
    from herald_smtp.logs import log_startup

    log_startup(settings_from({"REDIS_URL": "rediss://h", "REDIS_TLS_VERIFY": "false"}))
    assert any(r.levelname == "WARNING" and r.getMessage().startswith("REDIS_TLS_VERIFY=false: the Redis server's "
                                                                       "certificate is not checked")
               for r in caplog.records)


def test_a_sentinel_url_builds_one_master_client_for_the_store_and_the_limiter():
    settings = settings_from({"REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26379/herald?db=2"
                                           "&sentinel_password=spw", "RATE_LIMIT_GLOBAL": "5/60s"})
    pool = redis_clients.client(settings.redis_target).connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master and pool.service_name == "herald"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["password"])
            for s in sentinels] == [("s1", "spw"), ("s2", "spw")]
    limiter = open_storage(settings)
    assert isinstance(limiter, RedisStorage)
    # The limiter reads from the master too: a replica behind it would let a full window through.
    assert isinstance(limiter.get_connection(readonly=True).connection_pool, SentinelConnectionPool)
    assert limiter.get_connection(readonly=True).connection_pool.is_master


def test_retries_never_repeat_a_timeout():
    """A node that stops answering costs one socket timeout; a refused connection is retried once, at once."""
    for url in ("redis://h", "rediss://h", "unix:///x.sock", "redis+sentinel://s:26379/herald"):
        retry = redis_clients.connection_pool(target(url)).connection_kwargs["retry"]
        assert retry.get_retries() == 1, url
        assert retry._supported_errors == (redis.ConnectionError,), url
    cluster = redis_clients.cluster_options(target("redis+cluster://n1:7000"))
    assert cluster["retry"].get_retries() == 0
    assert cluster["socket_timeout"] == cluster["socket_connect_timeout"] == redis_clients.SOCKET_TIMEOUT


def test_opening_a_cluster_store_dials_nothing_until_the_first_operation():
    store = open_store(target("redis+cluster://127.0.0.1:1"), "p:")  # nothing listens on port 1
    assert isinstance(store, RedisStore)
    with pytest.raises(StoreUnavailable, match="idempotency store [(]Redis[)] unavailable"):
        store.ping()


@pytest.mark.parametrize("url, form", [
    ("redis://h:0", SINGLE_FORM), ("redis://:pw@h:0/1", SINGLE_FORM),
    ("rediss://h:0", "rediss://[[user]:password@]host[:port][/db]"),
    ("redis+sentinel://s1:0/herald", SENTINEL_FORM), ("redis+sentinel://s1:26379,s2:0/herald", SENTINEL_FORM),
    ("redis+cluster://n1:0", CLUSTER_FORM), ("redis+cluster://n1:7000,[::1]:0", CLUSTER_FORM),
    ("redis+cluster://n1:65536", CLUSTER_FORM),
])
def test_port_zero_stops_startup_in_every_form(url, form):
    # redis://h:0 used to become port 6379; in the Sentinel and Cluster forms the port became None, and a
    # Sentinel's ping() then raised TypeError (not a StoreUnavailable: every send and /readyz a 500).
    assert config_error({"REDIS_URL": url}) == f"REDIS_URL: expected {form} (a port number 1-65535)"


def test_a_fragment_is_refused_with_the_hint_to_percent_encode():
    # redis://:pa#ss@h/0: everything after # is a fragment, which a URL for a server has no use for.
    assert config_error({"REDIS_URL": "redis://h:6379/0#x"}) == (
        f"REDIS_URL: expected {SINGLE_FORM} (no #fragment; percent-encode ? & # / in a password)")
