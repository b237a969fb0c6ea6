"""herald-smtp as a real gunicorn process, for the end-to-end tests (and the bench)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .net import LOCALHOST, free_port
from .processes import stop

SERVE = ("herald_smtp.tools.cli", "serve")

class HeraldProcess:
    """`herald-smtp serve` (gunicorn) as a real process on 127.0.0.1, logs captured to a file.

    The environment holds only what the test passes (plus PATH/HOME), so a
    developer's REDIS_URL or .env cannot leak in; cwd is `workdir`.
    """

    _OWN = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")

    def __init__(self, workdir: Path, env: dict[str, str], *, module_argv: tuple[str, ...] = SERVE,
                 name: str = "herald-smtp"):
        """`module_argv`: what `python -m` runs (the bench runs its floor app this way too)."""
        self.workdir = workdir
        self.name = name
        self.module_argv = module_argv
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.env = {k: os.environ[k] for k in self._OWN if k in os.environ}
        self.env.update(env, PORT=f"{LOCALHOST}:{self.port}")
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        """The gunicorn master's PID (its workers are its children)."""
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> "HeraldProcess":
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", *self.module_argv],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout}s:\n{self.log_text()[-3000:]}")

    def terminate(self) -> None:
        """SIGTERM, gunicorn's graceful shutdown; returns at once."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM and wait for the exit (SIGKILL after `timeout`); returns the exit status."""
        proc, self._proc = self._proc, None
        return stop(proc, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "HeraldProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


BOUNCES = ("herald_smtp.tools.cli", "bounces")


def bounce_reader(workdir: Path, env: dict[str, str], name: str = "bounces") -> HeraldProcess:
    """`herald-smtp bounces` as a real process, its /healthz, /readyz and /metrics on the port picked for it."""
    process = HeraldProcess(workdir, env, module_argv=BOUNCES, name=name)
    process.env["BOUNCE_READER_PORT"] = str(process.port)
    return process
