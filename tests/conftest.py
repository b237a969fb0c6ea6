"""Fixtures: a real Redis, a real SMTP server (STARTTLS + AUTH), settings and app clients.

Servers are started once per session and reset between tests. Nothing is
skipped: a server that cannot start fails the test with the reason.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import redis

from herald_smtp.config import Settings, settings_from
from herald_smtp.web.app import create_app
from tests.support.client import SMTP_PASSWORD, SMTP_USER, smtp_env
from tests.support.clock import FakeClock
from tests.support.dns_server import DnsTestServer
from tests.support.mta import mta, mta_next_hop  # noqa: F401  (fixtures: the Postfix + Dovecot test bed)
from tests.support.redis_server import RedisServer
from tests.support.smtp_server import SmtpTestServer

# The alert rule unit tests need promtool (a Go binary, Debian package `prometheus`): where it is
# missing they are not collected, rather than skipped, so that no count suggests they ran, and
# the run ends with a line that says so (pytest_terminal_summary). .ci/run installs promtool.
PROMTOOL = shutil.which("promtool")
collect_ignore = [] if PROMTOOL else ["test_alert_rules.py"]


def pytest_terminal_summary(terminalreporter):
    if not PROMTOOL:
        terminalreporter.write_line(
            "promtool not on PATH: the alert rule tests (tests/test_alert_rules.py, deploy/prometheus/tests) "
            "did NOT run; install promtool (Debian: apt-get install prometheus) to run them", yellow=True)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """REDIS_URL from the environment if given, else a redis-server we start."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def _smtp_session(tmp_path_factory):
    server = SmtpTestServer(starttls=True, auth=(SMTP_USER, SMTP_PASSWORD),
                            certdir=tmp_path_factory.mktemp("certs"))
    with server:
        yield server


@pytest.fixture
def smtp(_smtp_session) -> SmtpTestServer:
    """The STARTTLS + AUTH server, with no mail and no faults at the start of each test."""
    _smtp_session.reset_faults()
    _smtp_session.clear()
    yield _smtp_session
    _smtp_session.reset_faults()


@pytest.fixture
def server_factory(tmp_path):
    """Builds dedicated SmtpTestServers (counters start at zero) and stops them afterwards."""
    started = []

    def build(**kwargs) -> SmtpTestServer:
        server = SmtpTestServer(certdir=tmp_path, **kwargs).start()
        started.append(server)
        return server

    yield build
    for server in started:
        server.stop()


@pytest.fixture
def settings(smtp) -> Settings:
    """Settings for the in-process store against the STARTTLS + AUTH server."""
    return settings_from(smtp_env(smtp) | {"IDEMPOTENCY_WAIT_SECONDS": "3"})


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client():
    """Build a test client for given settings (optionally a given store, and a clock for the breaker and pool)."""

    def make(settings: Settings, store=None, clock=time.monotonic):
        return create_app(settings, store=store, clock=clock).test_client()

    return make


@pytest.fixture(scope="session")
def _dns_server():
    with DnsTestServer() as server:  # stopping one takes a second: one serves the session
        yield server


@pytest.fixture
def dns_zone(_dns_server) -> DnsTestServer:
    """A real DNS server on loopback (tests/support/dns_server.py), no records yet; DNS_RESOLVER: its .resolver."""
    _dns_server.clear()
    return _dns_server
