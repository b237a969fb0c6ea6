"""REDIS_URL chooses the idempotency store by its scheme, as the `limits` library does."""

from __future__ import annotations

import pytest

from herald_smtp.config import ConfigError, settings_from
from herald_smtp.idempotency.memory import MemoryStore
from herald_smtp.idempotency.redis import RedisStore
from herald_smtp.idempotency.store import open_store
from herald_smtp.web.app import create_app
from herald_smtp.web.services import EXTENSION


@pytest.mark.parametrize("url", ["", "memory://"])
def test_empty_or_memory_url_is_the_in_process_store_and_one_worker(url):
    settings = settings_from({"REDIS_URL": url, "WEB_CONCURRENCY": "8"})
    assert not settings.store_is_shared
    assert settings.workers() == 1
    assert isinstance(open_store(settings.redis_target, "p:"), MemoryStore)
    assert isinstance(create_app(settings).extensions[EXTENSION].store, MemoryStore)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://user:pw@redis.example.com:6380/1",
                                 "unix:///var/run/redis.sock?db=2", "redis+sentinel://s1:26379,s2:26379/main",
                                 "redis+cluster://n1:7000,n2:7001"])
def test_redis_schemes_open_the_redis_store(url):
    settings = settings_from({"REDIS_URL": url, "WEB_CONCURRENCY": "3"})
    assert settings.store_is_shared and settings.workers() == 3
    # Nothing is dialled here: the client is built at the first operation.
    store = open_store(settings.redis_target, "p:")
    assert isinstance(store, RedisStore) and store.name == "redis"


def test_redis_store_answers_through_a_real_server(redis_url):
    store = RedisStore.from_url(redis_url, "test-url:")
    store.ping()
    claim = store.reserve("k", "fp", 5)
    assert claim.owned and store.release(claim)


@pytest.mark.parametrize("url", ["memcached://127.0.0.1:11211", "http://redis", "localhost:6379", "redis+unix:///x.sock",
                                 "rediss+cluster://a:1", "REDIS://127.0.0.1"])
def test_an_unknown_scheme_stops_startup_with_one_line_naming_redis_url(url):
    with pytest.raises(ConfigError) as err:
        settings_from({"REDIS_URL": url})
    assert str(err.value) == ("REDIS_URL: expected a URL starting with memory://, redis://, rediss://, unix://, "
                              "redis+sentinel:// or redis+cluster://")
