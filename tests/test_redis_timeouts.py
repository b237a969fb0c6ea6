"""A Redis node that stops answering costs one socket timeout, in every topology, then the failure mode.

The silent node is a real TCP server on 127.0.0.1 that accepts and never replies. redis-py's default Retry would
reconnect and repeat a timed-out command three times; counting the connections the node receives shows that
each operation asks it exactly once (the time itself is the benchmark's business, not a test's).
"""

from __future__ import annotations

import pytest

from herald_smtp.config import settings_from
from herald_smtp import redis_clients
from herald_smtp.idempotency.base import StoreUnavailable
from herald_smtp.idempotency.redis import RedisStore
from herald_smtp.addresses import parse_address
from herald_smtp.metrics import Metrics
from herald_smtp.outcomes import Outcome
from herald_smtp.sending.abuse import AbuseLimits
from tests.support.client import smtp_env
from tests.support.slow_server import SlowServer


@pytest.fixture
def silent(monkeypatch):
    # A shorter socket timeout than the service's 2 s, only to keep the suite quick: what is counted is the
    # number of attempts, which does not depend on it.
    monkeypatch.setattr(redis_clients, "SOCKET_TIMEOUT", 0.5)
    with SlowServer(banner=b"") as server:
        yield server


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "redis+sentinel://127.0.0.1:{port}/herald",
                                 "redis+cluster://127.0.0.1:{port}"], ids=["single", "sentinel", "cluster"])
def test_a_silent_node_is_asked_once_per_operation(silent, url):
    store = RedisStore.from_url(url.format(port=silent.port), "p:")
    with pytest.raises(StoreUnavailable, match="idempotency store [(]Redis[)] unavailable"):
        store.reserve("k", "fp", 5)
    assert silent.connections == 1


def test_the_rate_limiter_asks_a_silent_node_once_then_applies_closed_mode(silent):
    settings = settings_from({"REDIS_URL": f"redis://127.0.0.1:{silent.port}/0", "RATE_LIMIT_GLOBAL": "5/60s",
                              "IDEMPOTENCY_FAILURE_MODE": "closed"})
    limits = AbuseLimits(settings, Metrics())
    result = limits.admit(parse_address("a@example.com"))
    assert result.outcome is Outcome.STORE_UNAVAILABLE and "rate limit store (Redis) unavailable" in result.message
    assert silent.connections == 1


@pytest.mark.parametrize("mode, status", [("open", 200), ("closed", 503)])
def test_the_failure_mode_applies_to_a_silent_cluster_as_to_one_redis(silent, smtp, make_client, mode, status):
    env = smtp_env(smtp) | {"REDIS_URL": f"redis+cluster://127.0.0.1:{silent.port}",
                            "IDEMPOTENCY_FAILURE_MODE": mode}
    client = make_client(settings_from(env))
    response = client.post("/v1/send", json={"to": "a@example.com", "idempotency_key": f"k-{mode}"})
    assert response.status_code == status, response.get_json()
    assert len(smtp.messages) == (1 if mode == "open" else 0)
    if mode == "closed":
        assert response.get_json()["error_code"] == "provider_down"
    assert silent.connections == 1  # the reserve asked once; open mode then sends without idempotency
