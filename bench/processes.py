"""Our own server processes for a run: the benchmark SMTP server and gunicorn (herald-smtp or the floor).

Each is started as a child process on 127.0.0.1, waited for until it
answers, and stopped by its own PID (SIGTERM, then SIGKILL after a bound).
Redis comes from tests/support/redis_server.py, as in the test suite.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.herald_process import HeraldProcess
from tests.support.net import LOCALHOST, free_port
from tests.support.processes import stop

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 30.0
_RUNS = itertools.count(1)  # each gunicorn of a run logs to its own file


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA and a server certificate for 127.0.0.1, as PEM files."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path) -> "Certificates":
        ca = trustme.CA()
        cert = ca.issue_cert(LOCALHOST, "localhost")
        paths = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        ca.cert_pem.write_to_path(str(paths.ca_file))
        cert.private_key_and_cert_chain_pem.write_to_path(str(paths.cert_file))
        cert.private_key_pem.write_to_path(str(paths.key_file))
        return paths


def _child_env(extra: dict[str, str], first_on_path: Path | None = None) -> dict[str, str]:
    """Only what the child needs: a developer's REDIS_URL or SMTP settings must not leak in. `first_on_path`: a
    tree whose herald_smtp the child imports instead of the current one (the venv's editable install comes after
    PYTHONPATH)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in (first_on_path, REPO_ROOT) if path is not None)
    env.update(extra)
    return env


class BenchSmtpProcess:
    """bench/smtp_server.py in its own process, with its control port."""

    def __init__(self, workdir: Path, certs: Certificates, user: str, password: str,
                 delay_ms: float = 0.0, pipelining: bool = True, chunking: bool = False, oauth_token_prefix: str = ""):
        self.workdir, self.certs = workdir, certs
        self.user, self.password = user, password
        self.delay_ms, self.pipelining, self.chunking = delay_ms, pipelining, chunking
        self.oauth_token_prefix = oauth_token_prefix  # XOAUTH2 offered when set (bench/smtp_server.py)
        self.host = LOCALHOST
        self.port = free_port()
        self.control_port = free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def start(self, timeout: float = 15.0) -> "BenchSmtpProcess":
        argv = [sys.executable, "-m", "bench.smtp_server", "--port", str(self.port),
                "--control-port", str(self.control_port), "--cert", str(self.certs.cert_file),
                "--key", str(self.certs.key_file), "--user", self.user, "--delay-ms", str(self.delay_ms)]
        if not self.pipelining:
            argv.append("--no-pipelining")
        if self.chunking:
            argv.append("--chunking")
        if self.oauth_token_prefix:
            argv += ["--oauth-token-prefix", self.oauth_token_prefix]
        log = open(self.workdir / f"bench-smtp-{self.port}.log", "ab")
        with log:
            self._proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log,
                                          env=_child_env({"BENCH_SMTP_PASSWORD": self.password}))
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and self._proc.poll() is None:
            line = self._proc.stdout.readline()
            if line.strip() == b"ready":
                return self
        self.stop()
        raise RuntimeError(f"the benchmark SMTP server did not start (said {line!r}); see {self.workdir}")

    def control(self, command: str) -> dict:
        with socket.create_connection((LOCALHOST, self.control_port), timeout=10) as sock:
            sock.sendall(command.encode() + b"\n")
            with sock.makefile("rb") as answers:
                return json.loads(answers.readline())

    def stats(self) -> dict:
        return self.control("stats")

    def reset(self) -> None:
        self.control("reset")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop(proc, STOP_TIMEOUT)
        if proc is not None and proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> "BenchSmtpProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def herald_process(workdir: Path, env: dict[str, str], first_on_path: Path | None = None) -> HeraldProcess:
    return HeraldProcess(workdir, _child_env(env, first_on_path), name=f"herald-smtp-{next(_RUNS)}")


def floor_process(workdir: Path, env: dict[str, str]) -> HeraldProcess:
    return HeraldProcess(workdir, _child_env(env), module_argv=("bench.floor_app",), name=f"floor-{next(_RUNS)}")
