"""The bench, the plans and the fault scenarios, and the figures and invariants of a run.

The bench: a real redis-server with an append-only file fsynced on every
write (a Redis holding idempotency records must keep them across a restart:
without it a restart forgets every key and a later duplicate is mailed again,
whatever the service does), aiosmtpd with STARTTLS and AUTH behind the SMTP
relay (smtp_proxy.py), and herald-smtp as a real gunicorn (HeraldProcess)
with WORKERS workers, first in IDEMPOTENCY_FAILURE_MODE=open, then a second
one in closed mode for the closed-mode scenario. Time limits are scaled down
so a fault fits in seconds: SMTP_TIMEOUT_SECONDS=2, IDEMPOTENCY_WAIT_SECONDS=2,
SMTP_CIRCUIT_COOLDOWN_SECONDS=3 (30 by default).

One scenario: wait until /readyz says `ready`; the load runs for
before + fault + after seconds; `before` seconds in, the fault is injected,
and healed `fault` seconds later (a worker kill is instantaneous); the
service is never restarted. Recovery is measured from the end of the fault:
the first request sent after it answered `ok: true`, and /readyz `ready`
again; if the load is over before both, canary requests and the probe go on,
up to RECOVERY_WAIT. Mails are counted once, at the end of the run, from
everything the SMTP server received (a late mail of a scenario still counts).

Two passes (issue #25): the plan's scenarios against a server without
CHUNKING (herald-smtp's 2-round-trip exchange: MAIL, RCPT and DATA pipelined,
then the content and the dot), then its chunking_scenarios against one that
offers it (the 1-round-trip exchange: the commit, then MAIL, RCPT and
`BDAT <n> LAST` with the message in one write). Each pass has a bench of its
own (a fresh Redis, SMTP server and services), so keys and mails never mix.
In the CHUNKING pass every mail must have come by BDAT (the server marks each
one), else the run fails: it would not have measured the exchange it names.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from herald_smtp.timing import reservation_hold_seconds
from tests.support.client import SMTP_PASSWORD, SMTP_USER, smtp_env
from tests.support.herald_process import HeraldProcess
from tests.support.net import LOCALHOST
from tests.support.redis_server import RedisServer
from tests.support.smtp_server import SmtpTestServer

from .counting import Tally, mails_by_key, tally, unguarded_keys
from .load import CUT, NOT_JSON, TIMEOUT, Answer, LoadGenerator, Probe, ReadinessProbe, readyz
from .smtp_proxy import SmtpProxy

SMTP_TIMEOUT_SECONDS = 2.0
IDEMPOTENCY_WAIT_SECONDS = 2.0
CIRCUIT_COOLDOWN_SECONDS = 3.0
WORKERS = 3
WEB_THREADS = 4
API_KEY = "fault-run-api-key-0123456789"
KEY_PREFIX = "herald-smtp:idempotency:"

RECOVERY_BOUND = 15.0  # seconds from the end of a fault to ok:true and /readyz ready: the invariant
RECOVERY_WAIT = 30.0  # how long canaries and the probe go on after the load, at most
SLOW_REPLY_DELAY = SMTP_TIMEOUT_SECONDS + 1.5  # the server holds its reply to the end of the mail past the budget
TRICKLE_SECONDS = 0.25  # per byte of every server reply: a 30-byte reply takes 7.5 s
HOLD_SECONDS = reservation_hold_seconds(SMTP_TIMEOUT_SECONDS)  # how long a key stays reserved: 8 s here
COMMIT_HOLD = 1.0  # worker kill: the server holds its 250 this long, so sends wait at their commit point
WORST_CASE_ANSWER = SMTP_TIMEOUT_SECONDS + 1 + IDEMPOTENCY_WAIT_SECONDS  # docs/DESIGN.md, Time margins
# One deadline per request: no answer may take longer than this. Twice the worst-case answer: a request
# can also queue in gunicorn while every thread is busy with a slow send (the load has more threads).
LATENCY_BOUND = 2 * WORST_CASE_ANSWER


@dataclass(frozen=True)
class Plan:
    name: str
    rate: float  # offered requests per second
    threads: int
    before: float  # seconds of load before the fault
    fault: float  # seconds the fault lasts
    after: float  # seconds of load after it
    scenarios: tuple[str, ...]  # against the server without CHUNKING (2 round trips)
    chunking_scenarios: tuple[str, ...] = ()  # again, against a server offering CHUNKING (1 round trip)
    duplicate_share: float = 0.2
    max_seconds: float = 300.0  # each pass's bound: no scenario starts after it

    @property
    def duration(self) -> float:
        return self.before + self.fault + self.after

    @property
    def passes(self) -> tuple[tuple[bool, tuple[str, ...]], ...]:
        """(chunking, scenarios) of each pass that has scenarios, the 2-round-trip one first."""
        return tuple((chunking, names) for chunking, names in ((False, self.scenarios),
                                                               (True, self.chunking_scenarios)) if names)


TWO_ROUND_TRIPS = "2 round trips"
CHUNKING = "CHUNKING"


def exchange_name(chunking: bool) -> str:
    """The exchange herald-smtp uses against that server: how a pass is named in the output and the report."""
    return CHUNKING if chunking else TWO_ROUND_TRIPS


# --- the faults


@dataclass
class Fault:
    """What was done and when (seconds since the scenario's origin); recovery counts from `end`."""

    description: str = "none"
    start: float | None = None
    end: float | None = None
    evidence: dict = field(default_factory=dict)
    respawn_seconds: float | None = None


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))


def _since(origin: float) -> float:
    return time.monotonic() - origin


def _end_of_mail(bench: "Bench") -> str:
    return "BDAT ... LAST" if bench.chunking else "the final dot"


def no_fault(bench: "Bench", service: HeraldProcess, plan: Plan, origin: float) -> Fault:
    return Fault("none: the steady load alone (baseline)")


def redis_kill(bench: "Bench", service: HeraldProcess, plan: Plan, origin: float) -> Fault:
    _sleep_until(origin + plan.before)
    records = bench.redis_records()
    start = _since(origin)
    bench.redis.kill()
    time.sleep(plan.fault)
    bench.redis.start()  # the same port and the same append-only file
    end = _since(origin)
    return Fault(f"Redis SIGKILLed, restarted {end - start:.1f} s later on the same port", start, end,
                 {"idempotency records before the kill": records,
                  "idempotency records after the restart": bench.redis_records()})


def smtp_kill(bench: "Bench", service: HeraldProcess, plan: Plan, origin: float) -> Fault:
    _sleep_until(origin + plan.before)
    start = _since(origin)
    bench.smtp.stop()  # hangs up on every session, no reply
    bench.proxy.stop()  # and the port refuses connections
    time.sleep(plan.fault)
    bench.smtp.start()
    bench.proxy.start()
    end = _since(origin)
    return Fault(f"SMTP server stopped (sessions cut, port refusing), started again {end - start:.1f} s later",
                 start, end)


def smtp_slow(bench: "Bench", service: HeraldProcess, plan: Plan, origin: float) -> Fault:
    _sleep_until(origin + plan.before)
    start = _since(origin)
    bench.smtp.inject("message", delay=SLOW_REPLY_DELAY)
    time.sleep(plan.fault)
    hits = bench.smtp.fault_hits["message"]
    bench.smtp.reset_faults()
    end = _since(origin)
    return Fault(f"SMTP server holds its reply to {_end_of_mail(bench)} {SLOW_REPLY_DELAY:g} s (budget "
                 f"{SMTP_TIMEOUT_SECONDS:g} s) for {end - start:.1f} s", start, end,
                 {"mails held past the budget": hits})


def smtp_trickle(bench: "Bench", service: HeraldProcess, plan: Plan, origin: float) -> Fault:
    _sleep_until(origin + plan.before)
    start = _since(origin)
    bench.proxy.trickle = TRICKLE_SECONDS
    time.sleep(plan.fault)
    bench.proxy.trickle = 0.0
    end = _since(origin)
    return Fault(f"SMTP replies trickled one byte every {TRICKLE_SECONDS:g} s for {end - start:.1f} s",
                 start, end)


def worker_kill(bench: "Bench", service: HeraldProcess, plan: Plan, origin: float) -> Fault:
    _sleep_until(origin + plan.before)
    bench.smtp.inject("message", delay=COMMIT_HOLD)  # still inside the budget: the sends succeed, slowly
    time.sleep(min(1.0, plan.fault / 2))
    committing = bench.committing_records()
    in_flight = requests_in_flight(service)
    victim = max(sorted(in_flight), key=in_flight.get)  # the worker busiest with sends
    os.kill(victim, signal.SIGKILL)
    killed = _since(origin)
    respawned = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = children(service.pid)
        if victim not in now and len(now) == len(in_flight):
            respawned = _since(origin) - killed
            break
        time.sleep(0.05)
    _sleep_until(origin + plan.before + plan.fault)
    bench.smtp.reset_faults()
    return Fault(f"1 of {len(in_flight)} workers SIGKILLed mid-send, the one with the most requests in flight "
                 f"(replies to {_end_of_mail(bench)} held {COMMIT_HOLD:g} s, so sends wait at their commit point)",
                 killed, killed,
                 {"requests in flight in the killed worker": in_flight[victim],
                  "committing records at the kill (all workers)": committing,
                  "worker respawned by the master after": f"{respawned:.2f} s" if respawned is not None else "never"},
                 respawn_seconds=respawned)


def retry_cut_requests(load: LoadGenerator, answers: list[Answer], fault: Fault, origin: float) -> list[Answer]:
    """Once the killed owners' holds are over, each cut request again with its key, as a caller's retry.

    A key the dead worker had committed (its final dot may be out) must answer 500 "outcome unknown" and
    never be mailed; a key it had only reserved (killed before the commit point) is free and sends, once.
    """
    cut = sorted({a.key for a in answers if a.problem == CUT} - {a.key for a in answers if a.ok})
    _sleep_until(origin + fault.end + HOLD_SECONDS + 0.5)  # every hold taken before the kill has passed
    return [load.resend(key, 2 * 10**6 + i) for i, key in enumerate(cut)]


def requests_in_flight(service: HeraldProcess) -> dict[int, int]:
    """Per worker, the client connections it holds on the service's port (one request each: no keep-alive)."""
    established = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == service.port and fields[3] == "01":  # ESTABLISHED
                established.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in children(service.pid):
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}") in established
        counts[pid] = count
    return counts


def children(pid: int) -> list[int]:
    """The gunicorn master's workers."""
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(child) for child in fh.read().split()]


@dataclass(frozen=True)
class Scenario:
    name: str  # also the prefix of its keys
    title: str
    mode: str  # IDEMPOTENCY_FAILURE_MODE of the service it runs against
    inject: Callable[["Bench", HeraldProcess, Plan, float], Fault]
    effect: Callable[["Figures"], str | None]  # None if the fault visibly hit the service, else why not
    follow_up: Callable | None = None  # (load, answers, fault, origin) -> more answers, after the load


def _saw(label_part: str, what: str):
    def check(f: "Figures") -> str | None:
        return None if any(label_part in label for label in f.answers) else f"no answer {what}"
    return check


def _redis_open_effect(f: "Figures") -> str | None:
    if not f.tally.unguarded_keys:
        return "no request was sent without idempotency: Redis was never unreachable"
    if "degraded" not in f.ready_states:
        return "/readyz never said degraded during the outage"
    return None


def _kill_effect(f: "Figures") -> str | None:
    if f.fault.respawn_seconds is None:
        return "the killed worker was not respawned within 30 s"
    if not f.answers.get(f"no answer ({CUT})"):
        return "no request was cut: the worker was not mid-send"
    if not any("owner died" in label and "retry" in label for label in f.answers):
        return "no cut request had reached its commit point (no retry answered 'outcome unknown')"
    return None


def _steady_effect(f: "Figures") -> str | None:
    return f"{f.fresh_failures} failed answers without any fault" if f.fresh_failures else None


SCENARIOS = {s.name: s for s in [
    Scenario("steady", "Baseline: no fault", "open", no_fault, _steady_effect),
    Scenario("redis-open", "Redis killed and restarted (IDEMPOTENCY_FAILURE_MODE=open)", "open", redis_kill,
             _redis_open_effect),
    Scenario("smtp-restart", "SMTP server killed and restarted", "open", smtp_kill,
             _saw("send_failed", "send_failed: the outage never reached the service")),
    Scenario("smtp-slow", "SMTP server slowed past the budget", "open", smtp_slow,
             _saw("outcome unknown", "'outcome unknown': no send outlived its budget")),
    Scenario("smtp-trickle", "SMTP server trickling its replies", "open", smtp_trickle,
             _saw("send_failed", "send_failed: the trickle never reached the service")),
    Scenario("worker-kill", "A worker SIGKILLed mid-send", "open", worker_kill, _kill_effect, retry_cut_requests),
    Scenario("redis-closed", "Redis killed and restarted (IDEMPOTENCY_FAILURE_MODE=closed)", "closed", redis_kill,
             _saw("503 provider_down", "503 provider_down: closed mode never refused")),
]}

# Both passes of the full plan run every scenario with the same load, so their figures compare one to one.
FULL = Plan("full", rate=40, threads=16, before=6, fault=6, after=10, scenarios=tuple(SCENARIOS),
            chunking_scenarios=tuple(SCENARIOS))
# The reduced CHUNKING pass is the one scenario where the commit point and the unknown outcome meet (a reply
# held past the budget): its bench and scenario cost make test about 15 s.
REDUCED = Plan("reduced", rate=20, threads=8, before=1.5, fault=2.5, after=2.5, max_seconds=90,
               scenarios=("redis-open", "smtp-restart", "smtp-slow", "smtp-trickle", "worker-kill", "redis-closed"),
               chunking_scenarios=("smtp-slow",))


# --- the bench


class PersistentRedis(RedisServer):
    """RedisServer with an append-only file fsynced on every write, and kill() (SIGKILL, by our own PID)."""

    def start(self) -> "PersistentRedis":
        if self.is_running():
            raise RuntimeError(f"redis-server already running on port {self.port}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--bind", LOCALHOST, "--port", str(self.port), "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir), "--daemonize", "no"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_ready()
        return self

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


class Bench:
    """Redis, the SMTP server and its relay for one pass; one herald-smtp per failure mode, in turn."""

    def __init__(self, workdir: Path, chunking: bool = False):
        self.workdir = Path(workdir)
        self.chunking = chunking  # the SMTP server offers CHUNKING (and PIPELINING, as always)
        self.service: HeraldProcess | None = None
        self.mode: str | None = None
        self.masters: dict[str, int] = {}
        self.logs: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Bench":
        try:
            self.redis = PersistentRedis(self.workdir / "redis").start()
            self._stack.callback(self.redis.stop)
            self.smtp = SmtpTestServer(starttls=True, auth=(SMTP_USER, SMTP_PASSWORD), chunking=self.chunking,
                                       certdir=self.workdir / "certs").start()
            self._stack.callback(self.smtp.stop)
            self.proxy = SmtpProxy(self.smtp.host, self.smtp.port).start()
            self._stack.callback(self.proxy.stop)
            self._stack.callback(self._stop_service)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def env(self, mode: str) -> dict[str, str]:
        return smtp_env(self.smtp) | {
            "SMTP_PORT": str(self.proxy.port),  # through the relay
            "SMTP_TIMEOUT_SECONDS": f"{SMTP_TIMEOUT_SECONDS:g}",
            "SMTP_CIRCUIT_COOLDOWN_SECONDS": f"{CIRCUIT_COOLDOWN_SECONDS:g}",
            "REDIS_URL": self.redis.url,
            "IDEMPOTENCY_FAILURE_MODE": mode,
            "IDEMPOTENCY_WAIT_SECONDS": f"{IDEMPOTENCY_WAIT_SECONDS:g}",
            "IDEMPOTENCY_SECRET": "fault-run-idempotency-secret",
            "API_KEY": API_KEY,
            "WEB_CONCURRENCY": str(WORKERS),
            "WEB_THREADS": str(WEB_THREADS),
            "LOG_LEVEL": "info",
        }

    def service_for(self, mode: str) -> HeraldProcess:
        """The herald-smtp for this failure mode: started on first use (the other one is stopped first)."""
        if self.mode != mode:
            self._stop_service()
            workdir = self.workdir / f"herald-{mode}"
            workdir.mkdir(parents=True, exist_ok=True)
            self.service = HeraldProcess(workdir, self.env(mode)).start()
            self.mode, self.masters[mode] = mode, self.service.pid
        return self.service

    def _stop_service(self) -> None:
        service, self.service = self.service, None
        if service is not None:
            service.stop()
            self.logs[self.mode] = service.log_text()
        self.mode = None

    def all_logs(self) -> str:
        current = {self.mode: self.service.log_text()} if self.service is not None else {}
        return "\n".join((self.logs | current).values())

    def _records(self) -> list[str]:
        with self.redis.client() as client:
            keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=1000))
            return [v.decode() for v in client.mget(keys) if v is not None] if keys else []

    def redis_records(self) -> int:
        return len(self._records())

    def committing_records(self) -> int:
        return sum(1 for value in self._records() if json.loads(value).get("committing"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_ready(service: HeraldProcess, needed: int = 5, timeout: float = 30.0) -> bool:
    """`needed` /readyz `ready` in a row (they land on different workers), within `timeout`."""
    streak, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        streak = streak + 1 if readyz(LOCALHOST, service.port)[1] == "ready" else 0
        if streak >= needed:
            return True
        time.sleep(0.1)
    return False


# --- one scenario's run and its figures


@dataclass
class Figures:
    scenario: Scenario
    plan: Plan
    fault: Fault
    answers: Counter  # label -> count
    sent: int  # by the load, on time
    missed: int  # offered slots not sent on time: every thread busy
    offered: int
    canaries: int
    retries: int  # cut requests sent again after the load (worker kill)
    seconds: float  # the load's window
    latency: dict  # p50, p99, max (s)
    ok_share: float
    fresh_failures: int
    ready_states: set
    first_ok: float | None  # seconds from the end of the fault
    ready: float | None
    errors_until: float | None  # the last fresh failure of a request sent after the end of the fault
    tally: Tally = field(default_factory=Tally)
    chunking: bool = False  # the pass against the server offering CHUNKING
    bdat_mails: int = 0  # of the mails received, those that came by BDAT
    unknown_answers: int = 0  # answers 500 "outcome unknown" (replays and retries of a cut request included)
    cut_keys: int = 0  # keys whose request was cut (its worker killed) and never answered ok
    cut_delivered: int = 0  # of those, the server has the mail
    master_alive: bool = True
    started_ready: bool = True
    violations: list[str] = field(default_factory=list)

    @property
    def recovery(self) -> float | None:
        """From the end of the fault until both ok:true and /readyz ready (and the worker respawned)."""
        if self.fault.end is None:
            return None
        parts = [self.first_ok, self.ready] + ([self.fault.respawn_seconds] if self.scenario.inject is worker_kill
                                                else [])
        return None if any(p is None for p in parts) else max(parts)

    @property
    def achieved_rps(self) -> float:
        return self.sent / self.seconds

    @property
    def held(self) -> float:
        return self.sent / self.offered if self.offered else 0.0


@dataclass
class ScenarioRun:
    scenario: Scenario
    fault: Fault
    answers: list[Answer]
    probes: list[Probe]
    missed: int
    offered: int
    master_alive: bool
    started_ready: bool


def run_scenario(bench: Bench, plan: Plan, scenario: Scenario, say=print) -> ScenarioRun:
    service = bench.service_for(scenario.mode)
    started_ready = wait_ready(service)
    origin = time.monotonic() + 0.2
    probe = ReadinessProbe(LOCALHOST, service.port, origin).start()
    load = LoadGenerator(LOCALHOST, service.port, scenario.name, rate=plan.rate, threads=plan.threads,
                         duration=plan.duration, duplicate_share=plan.duplicate_share, origin=origin,
                         api_key=API_KEY, seed=hash(scenario.name) & 0xFFFF).start()
    try:
        fault = scenario.inject(bench, service, plan, origin)
    finally:
        answers = load.join()
    if scenario.follow_up is not None:
        answers += scenario.follow_up(load, answers, fault, origin)
    if fault.end is not None:
        deadline = origin + fault.end + RECOVERY_WAIT
        seq = 10**6
        while not any(a.ok and a.sent_at >= fault.end for a in answers) and time.monotonic() < deadline:
            answers.append(load.canary(seq))
            seq += 1
            time.sleep(0.25)
        while probe.ready_after(fault.end) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    probes = probe.stop()
    say(f"  {scenario.name}: {len(answers)} answers, fault: {fault.description}")
    return ScenarioRun(scenario, fault, answers, probes, load.missed, load.offered, alive(service.pid),
                       started_ready)


def figures_of(run: ScenarioRun, plan: Plan, mails: Counter, unguarded: set[str], chunking: bool = False,
               bdat: Counter | None = None) -> Figures:
    answers, fault = run.answers, run.fault
    load_answers = [a for a in answers if not (a.canary or a.retry)]
    latencies = sorted(a.answered_at - a.sent_at for a in load_answers if a.status is not None)
    after = [a for a in answers if fault.end is not None and a.sent_at >= fault.end]
    first_ok = min((a.answered_at for a in after if a.ok), default=None)
    ready = next((p.at for p in run.probes if fault.end is not None and p.at >= fault.end and p.state == "ready"),
                 None)
    errors_until = max((a.answered_at for a in after if a.fresh_failure), default=None)
    cut = {a.key for a in answers if a.problem == CUT} - {a.key for a in answers if a.ok and not a.retry}
    rel = (lambda t: None if t is None or fault.end is None else round(max(0.0, t - fault.end), 2))
    fig = Figures(
        scenario=run.scenario, plan=plan, fault=fault,
        answers=Counter(a.label + (" [retry of a cut request]" if a.retry else "") for a in answers),
        sent=len(load_answers), missed=run.missed, offered=run.offered, canaries=sum(a.canary for a in answers),
        retries=sum(a.retry for a in answers),
        seconds=plan.duration,
        latency={"p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99), "max": latencies[-1] if latencies else 0},
        ok_share=sum(a.ok for a in answers) / len(answers) if answers else 0.0,
        fresh_failures=sum(a.fresh_failure for a in answers),
        ready_states={p.state for p in run.probes},
        first_ok=rel(first_ok), ready=rel(ready), errors_until=rel(errors_until),
        tally=tally(answers, mails, unguarded),
        chunking=chunking,
        bdat_mails=sum((bdat or Counter())[k] for k in {a.key for a in answers}),
        unknown_answers=sum(a.unknown for a in answers),
        cut_keys=len(cut),
        cut_delivered=sum(1 for k in cut if mails[k]),
        master_alive=run.master_alive, started_ready=run.started_ready,
    )
    fig.violations = violations(fig)
    return fig


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def violations(f: Figures) -> list[str]:
    """Every invariant this scenario broke, in words; empty when all held."""
    out = []
    t = f.tally
    if t.lost:
        out.append(f"{len(t.lost)} mails lost (answered ok, never received): {t.lost[:5]}")
    if t.unexpected_doubles:
        out.append(f"{len(t.unexpected_doubles)} keys delivered twice with idempotency in force: "
                   f"{t.unexpected_doubles[:5]}")
    if t.allowed_doubles and f.scenario.mode != "open":
        out.append(f"{len(t.allowed_doubles)} unguarded doubles in {f.scenario.mode} mode")
    for problem in (NOT_JSON, f"no answer ({TIMEOUT})"):
        if f.answers.get(problem):
            out.append(f"{f.answers[problem]} answers: {problem}")
    stuck = [label for label in f.answers if "retry" in label and not ("200 ok" in label or "owner died" in label)]
    if stuck:
        out.append(f"a cut request retried after its owner's hold got neither ok nor 'outcome unknown': {stuck}")
    if f.latency["max"] > LATENCY_BOUND:
        out.append(f"an answer took {f.latency['max']:.1f} s, over the {LATENCY_BOUND:g} s bound")
    if f.answers.get(f"no answer ({CUT})") and f.scenario.inject is not worker_kill:
        out.append(f"{f.answers[f'no answer ({CUT})']} connections cut without a worker being killed")
    if f.fault.end is not None:
        if f.recovery is None:
            out.append(f"not recovered within {RECOVERY_WAIT:g} s of the end of the fault "
                       f"(first ok: {f.first_ok}, /readyz ready: {f.ready})")
        elif f.recovery > RECOVERY_BOUND:
            out.append(f"recovered after {f.recovery:.1f} s, over the {RECOVERY_BOUND:g} s bound")
    if not f.master_alive:
        out.append("the gunicorn master died: the service did not recover without a restart")
    if not f.started_ready:
        out.append("/readyz was not ready before the scenario started")
    out += exchange_violations(f)
    effect = f.scenario.effect(f)
    if effect:
        out.append(f"the fault did not take effect: {effect}")
    return out


def exchange_violations(f: Figures) -> list[str]:
    """The pass measured the exchange it names: in the CHUNKING pass every mail came by BDAT, else none did."""
    if f.chunking and not f.bdat_mails:
        return [f"CHUNKING was offered, yet none of the {f.tally.mails} mails came by BDAT: "
                "the 1-round-trip exchange was never used"]
    if f.chunking and f.bdat_mails < f.tally.mails:
        return [f"{f.tally.mails - f.bdat_mails} of {f.tally.mails} mails came by DATA although CHUNKING was offered"]
    if not f.chunking and f.bdat_mails:
        return [f"{f.bdat_mails} mails came by BDAT from a server that does not offer CHUNKING"]
    return []


# --- the whole run


@dataclass
class Run:
    plan: Plan
    figures: list[Figures]
    environment: dict
    wall_seconds: float
    skipped: list[str]
    workers_booted: int
    restarts: int  # gunicorn masters started beyond one per failure mode: must be 0

    @property
    def violations(self) -> list[str]:
        out = [f"{f.scenario.name} ({exchange_name(f.chunking)}): {v}" for f in self.figures for v in f.violations]
        out += [f"{name}: skipped, its pass was over its {self.plan.max_seconds:g} s bound" for name in self.skipped]
        return out

    def pass_figures(self, chunking: bool) -> list[Figures]:
        return [f for f in self.figures if f.chunking == chunking]

    @property
    def compared(self) -> list[str]:
        """The scenarios run in both passes, in order: the ones the two exchanges can be compared on."""
        chunked = {f.scenario.name for f in self.pass_figures(True)}
        return [f.scenario.name for f in self.pass_figures(False) if f.scenario.name in chunked]

    def unknown_answers(self, chunking: bool) -> int:
        """The pass's answers "outcome unknown", over the scenarios both passes ran."""
        return sum(f.unknown_answers for f in self.pass_figures(chunking) if f.scenario.name in self.compared)

    def unknown_keys(self, chunking: bool) -> int:
        return sum(f.tally.unknown_keys for f in self.pass_figures(chunking) if f.scenario.name in self.compared)


@dataclass
class PassRun:
    figures: list[Figures]
    environment: dict
    skipped: list[str]
    workers_booted: int
    restarts: int


def run(plan: Plan, workdir: Path, say=print) -> Run:
    started = time.monotonic()
    passes = []
    for chunking, names in plan.passes:
        say(f"pass: {exchange_name(chunking)} ({'with' if chunking else 'without'} CHUNKING)")
        passes.append(run_pass(plan, chunking, names, Path(workdir) / ("chunking" if chunking else "pipelining"),
                               say))
    return Run(plan, [f for p in passes for f in p.figures], passes[0].environment, time.monotonic() - started,
               [name for p in passes for name in p.skipped], workers_booted=sum(p.workers_booted for p in passes),
               restarts=sum(p.restarts for p in passes))


def run_pass(plan: Plan, chunking: bool, names: tuple[str, ...], workdir: Path, say=print) -> PassRun:
    """`names` one after another on a bench of their own, its SMTP server offering CHUNKING or not."""
    started = time.monotonic()
    runs: list[ScenarioRun] = []
    skipped: list[str] = []
    with Bench(workdir, chunking) as bench:
        environment = environment_of(bench)
        for name in names:
            if time.monotonic() - started > plan.max_seconds:
                skipped.append(f"{name} ({exchange_name(chunking)})")
                continue
            runs.append(run_scenario(bench, plan, SCENARIOS[name], say))
        time.sleep(1.0)  # a mail still on its way counts too
        messages = bench.smtp.messages
        logs = bench.all_logs()
        masters = len(bench.masters)
    mails, bdat = mails_by_key(messages), mails_by_key([m for m in messages if m.chunked])
    unguarded = unguarded_keys(logs)
    figures = [figures_of(r, plan, mails, unguarded, chunking, bdat) for r in runs]
    return PassRun(figures, environment, skipped, workers_booted=logs.count("Booting worker"),
                   restarts=masters - len({r.scenario.mode for r in runs}))


def environment_of(bench: Bench) -> dict:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "?"

    redis_version = subprocess.run([bench.redis.binary, "--version"], capture_output=True, text=True).stdout.split()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": next((w.split("=", 1)[1] for w in redis_version if w.startswith("v=")), "?"),
        "gunicorn": version("gunicorn"),
        "aiosmtpd": version("aiosmtpd"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted": bool(_git("status", "--porcelain", "--", "herald_smtp")),
        "argv": " ".join(["python -m tests.faults", *sys.argv[1:]]),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
