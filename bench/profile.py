"""python -m bench.profile [--seconds S] [--concurrency N] [--replays K] [--before COMMIT] [--rounds R] [--no-spy]
    [--top K]

Where a herald-smtp worker's CPU goes on a fresh send, and what a send costs in CPU (issue #25).

The setup is bench's status-cost one: a Redis server, the benchmark SMTP
server at 0 ms round trip with PIPELINING, herald-smtp (gunicorn, Redis store)
started against them, all on 127.0.0.1; the Python load generator sends fresh
keys at `--concurrency` (or, with `--replays K`, replays of K keys). py-spy
(on PATH or in the venv) samples the gunicorn master and its workers
(`--subprocesses`) while the load runs and the top of the profile is
printed: the functions with the most samples on their own
(self) and with their callees (total), as a share of the workers' samples.

`--before COMMIT` also runs herald-smtp from that commit's tree (extracted
with `git archive` under var/bench/, first on PYTHONPATH, as the status-cost
section does) next to the current tree, and measures the two in turn,
`--rounds` times, each round in another order: CPU ms per request of each,
and their ratio. Bounded: each measurement by `--seconds`; everything started
here is stopped by its own PID on the way out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from tests.support.redis_server import RedisServer

from . import loadgen, status_cost, workload
from .processes import REPO_ROOT, BenchSmtpProcess, Certificates, herald_process
from .usage import children, cpu_seconds

SPY_RATE = 200  # samples per second per process


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).parent / "py-spy"
    return found or (str(beside) if beside.exists() else None)


def frame_name(frame: str) -> str:
    """`function (module/path.py:line)` -> `function (module/path.py)`: samples add up per function, not line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if where else name


def top_of_profile(collapsed: Path, top: int) -> tuple[int, list[tuple[str, float, float]]]:
    """From py-spy's raw (collapsed) output: the number of worker samples and the `top` functions by self
    samples, each (function, self %, total %). The master's and idle threads' stacks are left out."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame_name(frame) for frame in stack.split(";")]
        if not any(".handle_request (" in frame for frame in frames):
            continue  # the master's loop, a worker waiting in accept/select: not a request's CPU
        samples += int(count)
        self_counts[frames[-1]] += int(count)
        for frame in set(frames):
            total_counts[frame] += int(count)
    rows = [(name, 100 * n / samples, 100 * total_counts[name] / samples)
            for name, n in self_counts.most_common(top)] if samples else []
    return samples, rows


def top_inclusive(collapsed: Path, needles: list[str]) -> dict[str, float]:
    """The share of request samples whose stack holds a frame containing each needle (a module or function)."""
    hits: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or ".handle_request (" not in stack:
            continue
        samples += int(count)
        for needle in needles:
            if needle in stack:
                hits[needle] += int(count)
    return {needle: 100 * hits[needle] / samples for needle in needles} if samples else {}


# Groups for the summary: a stack counts toward each group one of its frames belongs to.
GROUPS = {
    "logging (stdlib, with the formatters under it)": "(logging/__init__.py",
    "pythonjsonlogger": "(pythonjsonlogger/",
    "json encoder (stdlib)": "(json/encoder.py",
    "gunicorn access line": "Logger.access (gunicorn/",
    "email_validator": "(email_validator/",
    "herald_smtp.addresses": "(herald_smtp/addresses.py",
    "request parsing (herald_smtp/sending/request.py)": "(herald_smtp/sending/request.py",
    "redis-py": "(redis/",
    "smtplib": "(smtplib.py",
    "ssl": "(ssl.py",
    "email package": "(email/",
    "flask (the app, and all under it)": "(flask/",
    "werkzeug": "(werkzeug/",
    "prometheus_client": "(prometheus_client/",
}


def measure(herald, seconds: float, concurrency: int, prefix: str, replays: int = 0) -> tuple[int, int, float]:
    """(requests, errors, herald-smtp CPU ms per request) of one bounded run of fresh sends (of replays of
    `replays` keys, sent once first, when given)."""
    cpu = cpu_seconds(herald.pid)
    latencies = loadgen.http_load("127.0.0.1", herald.port, concurrency, 10_000_000, seconds, prefix, replays)
    used = cpu_seconds(herald.pid) - cpu
    return latencies.requests, latencies.errors, (used * 1000 / latencies.requests if latencies.requests else 0.0)


def profile(herald, seconds: float, concurrency: int, workdir: Path, top: int, say, replays: int = 0) -> None:
    spy = py_spy()
    if spy is None:
        say("py-spy is not installed (pip install py-spy): no profile")
        return
    out = workdir / "profile.txt"
    argv = [spy, "record", "--pid", str(herald.pid), "--subprocesses", "--format", "raw", "--rate", str(SPY_RATE),
            "--duration", str(int(seconds)), "--output", str(out), "--nonblocking", "--gil"]
    with open(workdir / "py-spy.log", "wb") as log:
        spy_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            requests, errors, cpu_ms = measure(herald, seconds, concurrency, "p-spy", replays)
            spy_proc.wait(seconds + 30)
        finally:
            if spy_proc.poll() is None:
                spy_proc.terminate()
                spy_proc.wait(10)
    say(f"under py-spy: {requests} requests, {errors} errors, {cpu_ms:.2f} CPU ms/req (sampling adds to it)")
    if not out.exists():
        say(f"py-spy wrote no profile: {(workdir / 'py-spy.log').read_text(errors='replace')[-2000:]}")
        return
    kept = REPO_ROOT / "var" / "bench" / "profile.txt"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, kept)
    samples, rows = top_of_profile(out, top)
    say(f"\nrequest samples in the workers: {samples} (collapsed stacks kept in {kept.relative_to(REPO_ROOT)})")
    say(f"{'self %':>7} {'total %':>8}  function")
    for name, self_pct, total_pct in rows:
        say(f"{self_pct:7.1f} {total_pct:8.1f}  {name}")
    say("\nby package (share of request samples with a frame in it):")
    shares = top_inclusive(out, list(GROUPS.values()))
    for group, needle in GROUPS.items():
        say(f"{shares.get(needle, 0.0):7.1f}  {group}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[2])
    parser.add_argument("--seconds", type=float, default=15.0, help="each measurement's length")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--replays", type=int, default=0,
                        help="replays of this many keys instead of fresh sends")
    parser.add_argument("--before", help="a commit to measure next to the current tree (CPU ms/req, no profile)")
    parser.add_argument("--rounds", type=int, default=3, help="with --before: measurements of each, in turn")
    parser.add_argument("--no-spy", action="store_true", help="no py-spy profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="herald-profile-") as directory, ExitStack() as stack:
        workdir = Path(directory)
        certs = Certificates.create(workdir)
        redis_server = stack.enter_context(RedisServer(workdir / "redis"))
        smtp = stack.enter_context(BenchSmtpProcess(workdir, certs, workload.SMTP_USER, workload.SMTP_PASSWORD))
        env = {"API_KEY": workload.API_KEY, "REDIS_URL": redis_server.url, "SMTP_FROM": workload.SENDER,
               "SMTP_FROM_NAME": "Herald", "SMTP_TIMEOUT_SECONDS": "10", "SMTP_HOST": smtp.host,
               "SMTP_PORT": str(smtp.port), "SMTP_USE_STARTTLS": "true", "SMTP_TLS_CA_FILE": str(certs.ca_file),
               "SMTP_USER": workload.SMTP_USER, "SMTP_PASSWORD": workload.SMTP_PASSWORD}
        services = {}
        if args.before:
            tree = status_cost.old_tree(REPO_ROOT, REPO_ROOT / "var" / "bench" / f"tree-{args.before}", args.before)
            if tree.missing:
                raise SystemExit(f"bench.profile: {tree.missing}")
            services[f"before ({args.before})"] = stack.enter_context(
                herald_process(workdir, env, first_on_path=tree.path))
        services["current tree"] = stack.enter_context(herald_process(workdir, env))
        for index, (name, herald) in enumerate(services.items()):
            loadgen.http_load("127.0.0.1", herald.port, args.concurrency, 96, 30.0, f"w{index}")
            say(f"{name}: gunicorn master {herald.pid}, workers {children(herald.pid)}")
        if args.before:
            compare(services, args, say)
        if not args.no_spy:
            profile(services["current tree"], args.seconds, args.concurrency, workdir, args.top, say, args.replays)
    say(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


def compare(services: dict, args, say) -> None:
    """Each service measured once per round, each round starting with the next: they share the load alike."""
    totals = {name: [0, 0.0] for name in services}
    names = list(services)
    ratios = []  # per round, current / before: two measurements seconds apart, under much the same load
    for turn in range(args.rounds):
        shift = turn % len(names)
        of_round = {}
        for name in names[shift:] + names[:shift]:
            prefix = f"r{turn}-{names.index(name)}"  # fresh keys: no earlier measurement of this run used it
            requests, errors, cpu_ms = measure(services[name], args.seconds, args.concurrency, prefix, args.replays)
            totals[name][0] += requests
            totals[name][1] += cpu_ms * requests
            of_round[name] = cpu_ms
            say(f"  round {turn + 1} {name:24} {requests:6} requests {errors} errors "
                f"{requests / args.seconds:7.1f} req/s {cpu_ms:6.3f} CPU ms/req")
        if len(of_round) == 2 and all(of_round.values()):
            ratios.append(of_round[names[1]] / of_round[names[0]])
    figures = {name: cpu / requests for name, (requests, cpu) in totals.items() if requests}
    for name, cpu_ms in figures.items():
        say(f"{name:24} {totals[name][0]:6} requests {cpu_ms:.3f} herald-smtp CPU ms/req")
    if len(figures) == 2:
        before, after = figures.values()
        say(f"current / before: {after / before:.3f} (each round: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    sys.exit(main())
