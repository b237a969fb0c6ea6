"""Local capture SMTP server for development (`herald-smtp sink`).

Owns: accepting mail on a local port (no AUTH, no TLS), storing each message
verbatim as a `.eml` file, and logging one line per mail. It never logs bodies:
they hold one-time codes.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import tempfile
import threading
from datetime import datetime, timezone

from aiosmtpd.controller import Controller

log = logging.getLogger("herald_smtp.sink")

DATA_SIZE_LIMIT = 1024 * 1024


def _new_filename() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(4)}.eml"


def store_message(directory: str, raw: bytes) -> str:
    """Write raw bytes to a new .eml file in directory; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, _new_filename())
    # Temp file in the same directory, then an atomic rename: a reader that
    # globs *.eml never sees a half-written mail.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".eml.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


class CaptureHandler:
    """aiosmtpd handler that stores every accepted mail as a .eml file."""

    def __init__(self, directory: str):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)

    async def handle_DATA(self, server, session, envelope) -> str:
        path = store_message(self.directory, envelope.original_content)
        log.info(
            "sink stored mail",
            extra={
                "file": path,
                "mail_from": envelope.mail_from,
                "rcpt_count": len(envelope.rcpt_tos),
            },
        )
        return f"250 OK: queued as {os.path.basename(path)}"


def start_sink(host: str, port: int, directory: str) -> Controller:
    """Start the capture server in a background thread; returns it running."""
    controller = Controller(
        CaptureHandler(directory),
        hostname=host,
        port=port,
        # Without this aiosmtpd calls socket.getfqdn(), a DNS lookup that can
        # stall for seconds on machines with no resolvable hostname.
        server_hostname=socket.gethostname() or "herald-sink",
        data_size_limit=DATA_SIZE_LIMIT,
    )
    controller.start()
    return controller


def run_sink(host: str, port: int, directory: str) -> int:
    """Serve until SIGINT/SIGTERM, then stop cleanly. Logging is the caller's job."""
    stop = threading.Event()
    previous = _install_stop_handlers(stop)
    try:
        controller = start_sink(host, port, directory)
        log.info(
            "sink listening",
            extra={"host": host, "port": port, "directory": os.path.abspath(directory)},
        )
        try:
            # A timed wait keeps the main thread returning to the interpreter,
            # so the signal handler runs promptly.
            while not stop.wait(0.5):
                pass
        finally:
            controller.stop()
    finally:
        _restore_handlers(previous)
    log.info("sink stopped")
    return 0


def _install_stop_handlers(stop: threading.Event) -> dict:
    def handler(signum, frame):
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
