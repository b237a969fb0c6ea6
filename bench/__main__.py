"""python -m bench [--quick] [--only status-cost|dkim|chunking|features] [--generator auto|wrk|python] [--report F]
                   [--plot F] [--json F] [--calibration F] [--from-json F]

Runs the measurements (bench/plan.py) against servers it starts itself on
127.0.0.1, prints each figure as it comes, and writes the Markdown report,
the PNG plot and the raw figures as JSON. --from-json renders the report and
the plot again from a saved run without measuring; --only status-cost (or
dkim, chunking, features) measures that section alone (1 to 2 minutes, for development: the
report it writes has only that section's figures). The whole run is bounded:
a watchdog ends it (stopping every server it started) after MAX_SECONDS.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
import time
from pathlib import Path

from . import plan, wrk
from .results import Machine, Run

MAX_SECONDS = 840  # bounded: the full run takes about 8 minutes on 2 cores (the feature-set section added 2-3)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(wrk_version: str) -> Machine:
    return Machine(cpu_model(), os.cpu_count() or 0, platform.python_version(), wrk_version)


class Overrun(Exception):
    """The watchdog fired."""


def _watchdog(signum, frame):
    raise Overrun(f"the benchmark ran longer than {MAX_SECONDS} s and was stopped")


def measure(args, say) -> Run:
    wrk_version = wrk.available()
    if args.generator == "wrk" and not wrk_version:
        raise SystemExit("bench: --generator wrk, but wrk is not on PATH")
    use_wrk = bool(wrk_version) and args.generator != "python"
    budget = plan.QUICK if args.quick else plan.FULL
    say(f"bench: {'quick' if args.quick else 'full'} run, HTTP load by {'wrk' if use_wrk else 'the Python generator'}"
        f"{'' if wrk_version else ' (wrk is not on PATH)'}")
    started = datetime.datetime.now(datetime.timezone.utc)
    began = time.monotonic()
    # SIGTERM unwinds like the watchdog: every `with` stops the process it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGALRM, _watchdog)
    signal.alarm(MAX_SECONDS)
    try:
        measurements, remarks = plan.run(budget, use_wrk, say, args.only)
    finally:
        signal.alarm(0)
    notes = []
    if not use_wrk:
        why = "wrk is not on PATH" if not wrk_version else "--generator python"
        notes.append(f"HTTP load by the Python generator ({why}); see The load generators.")
    if args.quick:
        notes.append("A --quick run (1 s per measurement): the figures are a smoke test, not a benchmark.")
    if args.only:
        notes.append(f"An --only {args.only} run: only that section was measured.")
    return Run(machine(wrk_version if use_wrk else ""), args.command, started.isoformat(timespec="seconds"),
               round(time.monotonic() - began, 1), measurements, notes, remarks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement: a smoke test of the bench")
    parser.add_argument("--only", choices=(plan.STATUS_COST, plan.DKIM, plan.CHUNKING, plan.FEATURES),
                        help="measure this section alone (a quick look during development, not the report's run)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="HTTP load generator (auto: wrk when on PATH)")
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--from-json", type=Path, help="render a saved run instead of measuring")
    parser.add_argument("--calibration", type=Path,
                        help="where the Python generator's comparison with wrk is kept: written by a run that "
                             "measured both, quoted by a run without wrk")
    parser.add_argument("--command", default="make bench", help="the command named in the report")
    args = parser.parse_args(argv)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    run = Run.load(args.from_json) if args.from_json else measure(args, say)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(run.to_json(), encoding="utf-8")
    from .calibration import Calibration, calibration_of
    from .report import ratios, render

    recorded = None
    if args.calibration:
        measured = calibration_of(run)
        if measured is not None:
            args.calibration.write_text(measured.to_json(), encoding="utf-8")
            say(f"wrote {args.calibration}")
        else:
            recorded = Calibration.load(args.calibration)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(render(run, args.plot.name if args.plot else None, recorded), encoding="utf-8")
        say(f"wrote {args.report}")
    if args.plot:
        from .plot import plot

        plot(run, args.plot)
        say(f"wrote {args.plot}")
    for ratio in ratios(run):
        say(ratio.line())
    say(f"wall time {run.wall_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
