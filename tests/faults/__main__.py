"""python -m tests.faults [--full | --reduced] [--report docs/RELIABILITY.md]

Runs the fault scenarios (against an SMTP server without CHUNKING, then one
with it), prints the summary, writes the report when asked, and exits 1 if an
invariant broke (the report is written either way: it says so).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from pathlib import Path

from .report import render
from .scenarios import FULL, REDUCED, exchange_name, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", action="store_const", dest="plan", const=FULL, help="the full set (default)")
    group.add_argument("--reduced", action="store_const", dest="plan", const=REDUCED, help="the set of make test")
    parser.add_argument("--report", type=Path, help="write the Markdown report here (e.g. docs/RELIABILITY.md)")
    args = parser.parse_args(argv)
    plan = args.plan or FULL

    # SIGTERM (e.g. an outer timeout) unwinds like Ctrl-C, so every server we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd warns about its own API on every AUTH
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    for chunking, names in plan.passes:
        say(f"fault run, plan {plan.name}, {exchange_name(chunking)}: {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="herald-faults-") as workdir:
        result = run(plan, Path(workdir), say)
    text = render(result)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text, encoding="utf-8")
        say(f"wrote {args.report}")
    for figures in result.figures:
        say(f"{figures.scenario.name:13} {exchange_name(figures.chunking):13} sent {figures.sent}/{figures.offered}  "
            f"ok {figures.ok_share:.0%}  mails {figures.tally.mails} (BDAT {figures.bdat_mails})  lost "
            f"{len(figures.tally.lost)}  doubled {len(figures.tally.unexpected_doubles)} "
            f"(+{len(figures.tally.allowed_doubles)} allowed)  unknown {figures.unknown_answers} answers, "
            f"{figures.tally.unknown_keys} keys  recover {figures.recovery}")
    if result.compared:
        say(f"outcome unknown answers ({', '.join(result.compared)}): {result.unknown_answers(True)} with "
            f"CHUNKING vs {result.unknown_answers(False)} with 2 round trips")
    for violation in result.violations:
        say(f"BROKEN: {violation}")
    say(f"wall time {result.wall_seconds:.0f} s; invariants {'held' if not result.violations else 'BROKEN'}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
