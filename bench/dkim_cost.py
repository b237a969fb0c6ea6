"""What the DKIM signing measurement needs besides the plan: keys made for the run, and the signature alone.

The keys (RSA 2048 and Ed25519) are made in the run's temporary directory and
go with it; none is ever written anywhere else. `signing_alone` times
Mail.payload_for(0) (MailWriter's DkimSigner, what a request runs) in this
process, so the figure holds nothing but the signature: no HTTP, no SMTP, no
Redis.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from herald_smtp.config import settings_from
from herald_smtp.sending.message import MailWriter
from herald_smtp.sending.request import parse_send_request

from . import workload
from .results import DKIM_ED25519, DKIM_RSA, Latencies

SELECTOR = "bench"


def write_keys(directory: Path) -> dict[str, Path]:
    """setup -> a fresh PEM private key file under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {DKIM_RSA: rsa.generate_private_key(65537, 2048), DKIM_ED25519: ed25519.Ed25519PrivateKey.generate()}
    files = {}
    for setup, key in keys.items():
        path = directory / f"{'rsa' if setup == DKIM_RSA else 'ed25519'}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        files[setup] = path
    return files


def dkim_env(key_file: Path) -> dict[str, str]:
    return {"DKIM_PRIVATE_KEY_FILE": str(key_file), "DKIM_SELECTOR": SELECTOR}


def signing_alone(key_file: Path | None, max_mails: int, seconds: float) -> tuple[Latencies, float]:
    """(wall-clock latencies, CPU ms per mail) of payload_for(0) on the bench's mail; None: without a key."""
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_FROM": workload.SENDER} | (dkim_env(key_file) if key_file else {})
    request = parse_send_request(workload.body("k"), None)
    mail = MailWriter(settings_from(env)).build(request, "bench@herald.test")
    samples = []
    cpu, began = time.process_time(), time.perf_counter()
    while len(samples) < max_mails and time.perf_counter() - began < seconds:
        start = time.perf_counter()
        mail.payload_for(0)
        samples.append(time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) * 1000 / len(samples)
    return Latencies.from_samples(samples, 0, time.perf_counter() - began), cpu_ms


