"""The Python load generator: a closed loop of N threads, each with its own client, bounded in requests and time.

Used for HTTP when wrk is not on PATH (and, when it is, to measure the HTTP
floor with both, so the report can state how the two compare), and for the
raw smtplib baselines. Each thread sends, waits for the answer, sends the
next: concurrency is the number of requests in flight. A request counts as
an error when the client raises or says it failed; latencies are those of
the successful requests, measured here, around the whole request.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Callable, Protocol

from . import workload
from .results import Latencies

CLIENT_TIMEOUT = 30.0


class Client(Protocol):
    def call(self, seq: int) -> bool: ...  # True: the request succeeded

    def close(self) -> None: ...


def closed_loop(concurrency: int, max_requests: int, max_seconds: float,
                make_client: Callable[[int], Client]) -> Latencies:
    """Run `concurrency` threads until `max_requests` were sent or `max_seconds` passed.

    Every thread makes its client first (a warm connection's setup is not a
    request); the clock starts when all of them are ready.
    """
    lock = threading.Lock()
    issued = 0
    samples: list[float] = []
    errors = 0
    clock = {}

    def start_clock() -> None:
        clock["start"] = time.perf_counter()
        clock["stop_at"] = clock["start"] + max_seconds

    ready = threading.Barrier(concurrency, action=start_clock, timeout=CLIENT_TIMEOUT + 5)

    def take() -> int | None:
        nonlocal issued
        with lock:
            if issued >= max_requests or time.perf_counter() >= clock["stop_at"]:
                return None
            issued += 1
            return issued

    def worker(index: int) -> None:
        nonlocal errors
        mine: list[float] = []
        failed = 0
        client = None
        try:
            try:
                client = make_client(index)
            finally:
                ready.wait()
            while (seq := take()) is not None:
                began = time.perf_counter()
                try:
                    ok = client.call(seq)
                except Exception:
                    ok = False
                    client.close()
                    client = make_client(index)
                if ok:
                    mine.append(time.perf_counter() - began)
                else:
                    failed += 1
        except Exception:
            failed += 1
        finally:
            if client is not None:
                client.close()
            with lock:
                samples.extend(mine)
                errors += failed

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + 2 * CLIENT_TIMEOUT + 10)
    if "start" not in clock:
        raise RuntimeError("no client of the closed loop could start")
    return Latencies.from_samples(samples, errors, time.perf_counter() - clock["start"])


class HttpClient:
    """One keep-alive HTTP connection POSTing Herald's body; fresh keys, or cycling through finished ones."""

    def __init__(self, host: str, port: int, prefix: str, worker: int, replay_keys: int = 0):
        self.connection = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT)
        self.prefix, self.worker, self.replay_keys = prefix, worker, replay_keys

    def call(self, seq: int) -> bool:
        if self.replay_keys:
            key = workload.replay_key(self.prefix, seq % self.replay_keys)
        else:
            key = workload.fresh_key(self.prefix, self.worker, seq)
        self.connection.request("POST", workload.PATH, body=workload.body(key), headers=workload.headers(key))
        response = self.connection.getresponse()
        response.read()
        return response.status == 200

    def close(self) -> None:
        self.connection.close()


def http_load(url_host: str, port: int, concurrency: int, max_requests: int, max_seconds: float,
              prefix: str, replay_keys: int = 0) -> Latencies:
    return closed_loop(concurrency, max_requests, max_seconds,
                       lambda worker: HttpClient(url_host, port, prefix, worker, replay_keys))
