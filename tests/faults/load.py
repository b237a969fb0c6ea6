"""The load: N threads POSTing /v1/send at a steady offered rate, a share of them duplicates.

Request i is due at origin + i / rate. A thread takes the next due slot and
waits for its time; a slot already more than MAX_LATENESS late (every thread
was busy with slow answers) is skipped and counted as missed, never sent in
a burst afterwards: "load held" is the share of the offered requests that
went out on time. Each slot is a new key, or (duplicate_share of them) a key
among the last RECENT ones with exactly the same payload, as a retried or
duplicated Herald request is: it must be replayed or refused (409), never
mailed twice. The key is in the subject, so the SMTP server's copy names it.
Every answer is recorded: status, body, replayed or not, what went wrong at
the HTTP level, and when it was sent and answered (seconds since origin).
"""

from __future__ import annotations

import collections
import http.client
import json
import random
import socket
import threading
import time
from dataclasses import dataclass

MAX_LATENESS = 0.5
RECENT = 40
CLIENT_TIMEOUT = 15.0  # longer than the worst-case answer (budget + 1 + wait + Redis timeouts)

TIMEOUT, CUT, NOT_JSON = "timeout", "connection cut", "not JSON"


@dataclass
class Answer:
    seq: int
    key: str
    duplicate: bool
    sent_at: float
    answered_at: float
    status: int | None
    body: dict | None
    replayed: bool = False
    problem: str = ""  # TIMEOUT, CUT or NOT_JSON: no usable answer
    canary: bool = False  # sent after the load, to see the service recover
    retry: bool = False  # a cut request sent again with the same key, after the load

    @property
    def ok(self) -> bool:
        return self.body is not None and self.body.get("ok") is True

    @property
    def error_code(self) -> str:
        return (self.body or {}).get("error_code") or ""

    @property
    def unknown(self) -> bool:
        """500 send_failed "outcome unknown": the mail may or may not be out; never counted as lost."""
        return not self.ok and str((self.body or {}).get("error_message", "")).startswith("outcome unknown")

    @property
    def abandoned(self) -> bool:
        """The answer about a key whose owner died at its commit point (not a new failure)."""
        return self.unknown and "stopped before it could record" in self.body.get("error_message", "")

    @property
    def fresh_failure(self) -> bool:
        """A send that failed now: not ok, not a replay, not a 409, not an answer about an earlier failure."""
        if self.problem:
            return True
        return not self.ok and not self.replayed and self.status != 409 and not self.abandoned

    @property
    def label(self) -> str:
        if self.problem:
            return f"no answer ({self.problem})" if self.problem != NOT_JSON else NOT_JSON
        if self.ok:
            text = "200 ok"
        else:
            text = f"{self.status} {self.error_code}"
            if self.abandoned:
                text += " (outcome unknown: owner died)"
            elif self.unknown:
                text += " (outcome unknown)"
        return text + (" (replayed)" if self.replayed else "")


def payload_for(key: str, n: int) -> dict:
    """What Herald sends: the rendered mail, the key in the body and (by post()) the header."""
    code = f"{(n * 7919) % 1000000:06d}"
    return {"channel": "email", "to": f"user{n % 97}@example.com", "subject": f"Your code [{key}]",
            "body": f"Your code is {code}. It expires in 10 minutes. (ref {key})", "locale": "en",
            "idempotency_key": key}


def post(host: str, port: int, payload: dict, request_id: str, api_key: str,
         timeout: float = CLIENT_TIMEOUT) -> tuple[int | None, dict | None, bool, str]:
    """(status, JSON body, replayed, problem); a new connection per request, as a fresh client has."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/send", body=json.dumps(payload).encode(), headers={
            "Content-Type": "application/json", "Idempotency-Key": payload["idempotency_key"],
            "X-Request-ID": request_id, "X-API-Key": api_key})
        response = conn.getresponse()
        raw = response.read()
        status, replayed = response.status, response.getheader("Idempotent-Replayed") == "true"
        content_type = response.getheader("Content-Type") or ""
    except socket.timeout:
        return None, None, False, TIMEOUT
    except (OSError, http.client.HTTPException):
        return None, None, False, CUT
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not content_type.startswith("application/json"):
        return status, None, replayed, NOT_JSON
    return status, body, replayed, ""


class LoadGenerator:
    def __init__(self, host: str, port: int, prefix: str, *, rate: float, threads: int, duration: float,
                 duplicate_share: float, origin: float, api_key: str, seed: int = 0):
        self.host, self.port, self.prefix, self.api_key = host, port, prefix, api_key
        self.rate, self.threads, self.duration = rate, threads, duration
        self.duplicate_share, self.origin = duplicate_share, origin
        self.answers: list[Answer] = []
        self.missed = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._next_slot = 0
        self._next_key = 0
        self._recent: collections.deque[tuple[str, int]] = collections.deque(maxlen=RECENT)
        self._workers: list[threading.Thread] = []

    @property
    def offered(self) -> int:
        return int(self.rate * self.duration)

    def start(self) -> "LoadGenerator":
        self._workers = [threading.Thread(target=self._run, daemon=True, name=f"load-{i}")
                         for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def join(self) -> list[Answer]:
        for worker in self._workers:
            worker.join(self.duration + CLIENT_TIMEOUT + 30)  # bounded: every request has a client timeout
        with self._lock:
            return list(self.answers)

    def canary(self, seq: int) -> Answer:
        """One request with a new key, after the load: does the service send again?"""
        with self._lock:
            key, n = self._new_key()
        return self._send(seq, key, n, False, canary=True)

    def resend(self, key: str, seq: int) -> Answer:
        """The request of `key` again, the same payload, as a caller retrying a request that got no answer."""
        answer = self._send(seq, key, int(key.rsplit("-", 1)[1]), True)
        answer.retry = True
        return answer

    def _new_key(self) -> tuple[str, int]:
        n = self._next_key
        self._next_key += 1
        key = f"{self.prefix}-{n:05d}"
        self._recent.append((key, n))
        return key, n

    def _take_slot(self):
        """The next slot to send (seq, due time, key, n, duplicate), or None when the window is over."""
        with self._lock:
            while True:
                seq = self._next_slot
                due = self.origin + seq / self.rate
                if seq >= self.offered:
                    return None
                self._next_slot += 1
                if time.monotonic() - due > MAX_LATENESS:
                    self.missed += 1  # every thread was busy: the offered load was not held
                    continue
                if self._recent and self._rng.random() < self.duplicate_share:
                    key, n = self._rng.choice(self._recent)
                    return seq, due, key, n, True
                key, n = self._new_key()
                return seq, due, key, n, False

    def _run(self) -> None:
        while (slot := self._take_slot()) is not None:
            seq, due, key, n, duplicate = slot
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            answer = self._send(seq, key, n, duplicate)
            with self._lock:
                self.answers.append(answer)

    def _send(self, seq: int, key: str, n: int, duplicate: bool, canary: bool = False) -> Answer:
        sent_at = time.monotonic() - self.origin
        status, body, replayed, problem = post(self.host, self.port, payload_for(key, n), f"{key}.{seq}",
                                               self.api_key)
        return Answer(seq, key, duplicate, sent_at, time.monotonic() - self.origin, status, body, replayed,
                      problem, canary)


@dataclass
class Probe:
    at: float
    status: int | None
    state: str  # "ready", "degraded", "not_ready", or what went wrong ("probe: connection cut")


class ReadinessProbe:
    """GET /readyz every `interval` s from its own thread; each answer with its time since origin."""

    def __init__(self, host: str, port: int, origin: float, interval: float = 0.2):
        self.host, self.port, self.origin, self.interval = host, port, origin, interval
        self.samples: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="readyz-probe")

    def start(self) -> "ReadinessProbe":
        self._thread.start()
        return self

    def stop(self) -> list[Probe]:
        self._stop.set()
        self._thread.join(timeout=10)
        return list(self.samples)

    def ready_after(self, t: float) -> float | None:
        """When /readyz first said `ready` at or after t (seconds since origin), or None."""
        return next((p.at for p in list(self.samples) if p.at >= t and p.state == "ready"), None)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(Probe(time.monotonic() - self.origin, *readyz(self.host, self.port)))
            self._stop.wait(self.interval)


def readyz(host: str, port: int, timeout: float = 3.0) -> tuple[int | None, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        body = json.loads(response.read())
        return response.status, str(body.get("status"))
    except socket.timeout:
        return None, f"probe: {TIMEOUT}"
    except (OSError, http.client.HTTPException):
        return None, f"probe: {CUT}"
    except ValueError:
        return None, f"probe: {NOT_JSON}"
    finally:
        conn.close()
