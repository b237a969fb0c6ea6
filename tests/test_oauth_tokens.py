"""The token source on its own, against the real local token endpoint: renewal ahead of expiry, threads that
keep the current token while one renews it, and the metrics. The source's clock is a FakeClock so a token's
lifetime passes without sleeping; the endpoint and every fetch are real."""

from __future__ import annotations

import threading
import time

import pytest

from herald_smtp.config.oauth import OAuthClient
from herald_smtp.metrics import Metrics
from herald_smtp.smtp.tokens import TokenError, TokenSource
from tests.support.clock import FakeClock
from tests.support.oauth_server import OAuthTestServer
from tests.test_operations import metric

SCOPE = "https://outlook.office365.com/.default"


@pytest.fixture
def endpoint():
    with OAuthTestServer(token_lifetime=100) as server:
        server.register_client("app", "client-s3cret-value", [SCOPE])
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def source(endpoint, clock, metrics) -> TokenSource:
    client = OAuthClient(endpoint.token_url, "app", SCOPE, client_secret="client-s3cret-value")
    return TokenSource(client, "relay.example:587", metrics, clock=clock)


def soon() -> float:
    return time.monotonic() + 5


def test_a_token_is_renewed_once_less_than_a_tenth_of_its_lifetime_is_left(source, endpoint, clock):
    first = source.get(soon())
    clock.advance(89)  # 11 s of 100 left: still fresh
    assert source.get(soon()) is first and endpoint.fetches == 1
    clock.advance(2)  # 9 s left: due
    renewed = source.get(soon())
    assert renewed is not first and endpoint.fetches == 2
    assert endpoint.valid(renewed.value)


def test_while_one_thread_renews_the_others_keep_the_current_token(source, endpoint, clock):
    current = source.get(soon())
    clock.advance(95)  # due for renewal, still valid
    endpoint.delay(1.0)  # the renewal is slow
    renewing = threading.Thread(target=source.get, args=(soon(),))
    renewing.start()
    time.sleep(0.2)  # the renewal is under way
    started = time.monotonic()
    assert source.get(soon()) is current  # no wait for the slow fetch
    assert time.monotonic() - started < 0.5
    renewing.join(timeout=5)
    assert endpoint.fetches == 2 and source.get(soon()) is not current


def test_a_failed_renewal_keeps_the_current_token_until_it_expires(source, endpoint, clock):
    current = source.get(soon())
    clock.advance(95)
    endpoint.fail_status(503, times=1)
    assert source.get(soon()) is current  # renewal failed: the current one still works for 5 s
    clock.advance(6)  # expired
    assert source.get(soon()) is not current  # fetched anew (the endpoint answers again)


def test_a_refused_token_is_replaced_even_within_its_lifetime(source, endpoint):
    current = source.get(soon())
    replaced = source.get(soon(), refused=current)
    assert replaced is not current and endpoint.fetches == 2
    assert source.get(soon(), refused=current) is replaced  # another thread already replaced it: no fetch
    assert endpoint.fetches == 2


def test_fetches_are_counted_by_result_and_the_token_age_at_use_is_observed(source, endpoint, clock, metrics):
    source.get(soon())
    clock.advance(30)
    source.get(soon())
    endpoint.fail("invalid_client", times=1)
    with pytest.raises(TokenError) as refused:
        source.get(soon(), refused=source.get(soon()))
    assert refused.value.setup and refused.value.oauth_error == "invalid_client"
    text = metrics.exposition()[0].decode()
    relay = "relay.example:587"
    assert metric(text, "herald_smtp_oauth_token_fetches_total", relay=relay, result="ok") == 1
    assert metric(text, "herald_smtp_oauth_token_fetches_total", relay=relay, result="refused") == 1
    assert metric(text, "herald_smtp_oauth_token_age_seconds_count", relay=relay) == 3
    assert metric(text, "herald_smtp_oauth_token_age_seconds_sum", relay=relay) == 60  # 0 + 30 + 30
