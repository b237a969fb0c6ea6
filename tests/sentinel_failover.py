"""Sentinel failover, measured: SIGKILL the master during a steady load with duplicates.

    python -m tests.sentinel_failover [--duration 24] [--kill-at 6] [--rate 30]

Starts, on 127.0.0.1 only: a master + replica + three sentinels (down-after-milliseconds 1000, so that the
figures show the service's own part; production Sentinel defaults to 30 s, which then dominates), the SMTP
test server, and herald-smtp under gunicorn (2 workers x 8 threads) with REDIS_URL=redis+sentinel://...; then
the fault run's load generator (tests/faults/load.py: a steady offered rate, 30 % duplicates, bounded in
requests and time) and a /readyz probe. At --kill-at seconds the master gets SIGKILL. Once per
IDEMPOTENCY_FAILURE_MODE (open, closed) it reports: when the sentinels promoted the replica, when sends
succeeded again, the failed requests by code, when /readyz said `ready` again, and the keys mailed twice
(with those sent without idempotency in open mode told apart from the rest). Prints Markdown; stops itself.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.faults.counting import mails_by_key, tally, unguarded_keys
from tests.faults.load import LoadGenerator, ReadinessProbe
from tests.support.client import API_KEY, SMTP_PASSWORD, SMTP_USER, smtp_env
from tests.support.herald_process import HeraldProcess
from tests.support.net import LOCALHOST
from tests.support.redis_topologies import RedisSentinelSet
from tests.support.smtp_server import SmtpTestServer


@dataclass
class Run:
    mode: str
    requests: int
    promoted_after: float | None
    last_failure_after: float | None
    first_send_after: float | None  # the first fresh 200 after the kill
    ready_after: float | None
    failures: collections.Counter
    doubled: list[str]
    unguarded_doubles: list[str]
    other_doubles: list[str]
    missed: int


def measure(mode: str, workdir: Path, smtp: SmtpTestServer, duration: float, kill_at: float, rate: float) -> Run:
    with ExitStack() as stack:
        sentinels = stack.enter_context(RedisSentinelSet(workdir / f"sentinel-{mode}"))
        env = smtp_env(smtp) | {"REDIS_URL": sentinels.url, "IDEMPOTENCY_FAILURE_MODE": mode, "API_KEY": API_KEY,
                                "WEB_CONCURRENCY": "2", "WEB_THREADS": "8", "IDEMPOTENCY_WAIT_SECONDS": "3"}
        (workdir / f"service-{mode}").mkdir()
        service = stack.enter_context(HeraldProcess(workdir / f"service-{mode}", env))
        smtp.clear()
        origin = time.monotonic()
        probe = ReadinessProbe(LOCALHOST, service.port, origin, interval=0.1).start()
        load = LoadGenerator(LOCALHOST, service.port, f"fo{mode}", rate=rate, threads=16, duration=duration,
                             duplicate_share=0.3, origin=origin, api_key=API_KEY, seed=7).start()
        time.sleep(max(0.0, origin + kill_at - time.monotonic()))
        old_master = sentinels.master.port
        killed = time.monotonic() - origin
        sentinels.master.kill()
        promoted = _wait_for_promotion(sentinels, old_master, origin, deadline=origin + duration + 30)
        answers = load.join()
        samples = probe.stop()
        log = service.log_text()
    after = [a for a in answers if a.sent_at >= killed]
    failed = [a for a in after if a.fresh_failure]
    last_failed_sent = max((f.sent_at for f in failed), default=killed)
    # Sends succeed again from the first fresh 200 to a request sent after the last one that failed.
    first_send = min((a.answered_at for a in after if a.ok and not a.replayed and a.sent_at > last_failed_sent),
                     default=None)
    last_failure = max((f.answered_at for f in failed), default=None)
    counts = tally(answers, mails_by_key(smtp.messages), unguarded_keys(log))
    ready = next((p.at for p in samples if p.at >= (promoted or killed) and p.state == "ready"), None)
    return Run(
        mode=mode, requests=len(answers),
        promoted_after=_since(promoted, killed),
        last_failure_after=_since(last_failure, killed),
        first_send_after=_since(first_send, killed),
        ready_after=_since(ready, killed),
        failures=collections.Counter(a.label for a in failed),
        doubled=counts.doubled, unguarded_doubles=counts.allowed_doubles, other_doubles=counts.unexpected_doubles,
        missed=load.missed,
    )


def _since(at: float | None, killed: float) -> float | None:
    return None if at is None else at - killed


def _wait_for_promotion(sentinels: RedisSentinelSet, old_master: int, origin: float, deadline: float) -> float | None:
    while time.monotonic() < deadline:
        try:
            if sentinels.master_port() != old_master:
                return time.monotonic() - origin
        except Exception:  # a sentinel busy with the election: ask again
            pass
        time.sleep(0.05)
    return None


def _s(value: float | None, none: str = "never") -> str:
    return none if value is None else f"{value:.1f} s"


def markdown(runs: list[Run], rate: float, duration: float, kill_at: float) -> str:
    lines = [f"Load: {rate:g} requests/s for {duration:g} s (30 % duplicates), SIGKILL of the master at "
             f"{kill_at:g} s; Sentinel down-after-milliseconds 1000; 2 workers x 8 threads. Times from the kill.",
             "",
             "| IDEMPOTENCY_FAILURE_MODE | requests | replica promoted | sends succeed again | last failed request "
             "answered | /readyz `ready` again | failed requests (by answer) | keys mailed twice |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        failures = ", ".join(f"{n} x {label}" for label, n in run.failures.most_common()) or "none"
        doubles = (f"{len(run.doubled)} ({len(run.unguarded_doubles)} sent without idempotency, "
                   f"{len(run.other_doubles)} other)") if run.doubled else "0"
        lines.append(f"| `{run.mode}` | {run.requests} | {_s(run.promoted_after)} | {_s(run.first_send_after)} | "
                     f"{_s(run.last_failure_after, 'none failed')} | {_s(run.ready_after)} | {failures} | {doubles} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=24.0)
    parser.add_argument("--kill-at", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=30.0)
    args = parser.parse_args(argv)
    if not (0 < args.kill_at < args.duration <= 120 and 0 < args.rate <= 200):
        parser.error("bounded: 0 < --kill-at < --duration <= 120, 0 < --rate <= 200")
    workdir = Path(tempfile.mkdtemp(prefix="herald-failover-"))
    with SmtpTestServer(starttls=True, auth=(SMTP_USER, SMTP_PASSWORD), certdir=workdir / "certs") as smtp:
        runs = [measure(mode, workdir, smtp, args.duration, args.kill_at, args.rate) for mode in ("open", "closed")]
    print(markdown(runs, args.rate, args.duration, args.kill_at))


if __name__ == "__main__":
    main()
