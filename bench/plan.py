"""Which measurements a run makes, in which order, against which of our own servers.

1. The HTTP floor (bench/floor_app.py on herald-smtp's gunicorn options) at
   each concurrency, with wrk and with the Python generator when wrk is on
   PATH (that pair is how the Python generator is checked against wrk).
2. For each round trip (0 and 20 ms) and PIPELINING on and off, a fresh
   benchmark SMTP server; with PIPELINING on, the raw smtplib baselines
   first (connect-per-message, warm connection, the final dot written apart
   with and without TCP_NODELAY, the ceiling); then herald-smtp (Redis store) started against it, warmed up, and
   measured at each concurrency with fresh keys; at 0 ms with PIPELINING,
   also the replays of finished keys.
3. Message status and the suppression list, before and after (issue #23):
   at 0 ms, PIPELINING, concurrency 16, herald-smtp from the tree before the
   status records (bench/status_cost.py), from the current tree, and from the
   current tree with the suppression lookup off, all three running at once and
   measured in turn, `status_rounds` times (each round in another order), with
   Redis's counts around each measurement. `--only status-cost` runs this alone.
4. DKIM signing (issue #24): the signature alone in this process (bench/dkim_cost.py), then the same
   setup as 3 with herald-smtp without a key, with RSA 2048 and with Ed25519, all three running at once
   and measured in turn, `status_rounds` times. `--only dkim` runs this alone.
5. One round trip (issue #25): a benchmark SMTP server offering PIPELINING and CHUNKING at 20 ms, the
   connect-per-message baseline on it, then herald-smtp at each concurrency. `--only chunking` runs this
   alone.
6. CPU per send by feature set (issue #25): at 0 ms, PIPELINING, concurrency 16, herald-smtp from the tree
   before #25 (every feature on), from the current tree with the suppression list off, with every feature on
   and a password, with XOAUTH2 (a token from a real token endpoint on loopback, cached), and with DKIM
   Ed25519 and RSA 2048 keys, and the HTTP floor, all running at once and measured in turn,
   `feature_rounds` times. `--only features` runs this alone.

Every measurement is bounded by Budget.max_requests and Budget.seconds; the
server's counts are reset before and read after each one, and the gunicorn
workers' peak RSS is read after each one.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from contextlib import ExitStack
from typing import Callable

import redis

from tests.support.herald_process import HeraldProcess
from tests.support.oauth_server import OAuthTestServer
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.redis_server import RedisServer

from . import dkim_cost, loadgen, smtp_clients, status_cost, workload
from . import wrk as wrk_runner
from .usage import cpu_seconds, worker_peak_rss_mb
from .processes import REPO_ROOT, BenchSmtpProcess, Certificates, floor_process, herald_process
from .results import CONNECT_PER_MESSAGE_CHUNKING, HERALD_CHUNKING
from .results import (FEATURES_BEFORE, FEATURES_ED25519, FEATURES_FLOOR, FEATURES_NO_SUPPRESSION, FEATURES_OAUTH,
                      FEATURES_PASSWORD, FEATURES_RSA, LOAD_DURING_FEATURES, SKIPPED_FEATURES_BEFORE)
from .results import (CEILING, CONNECT_PER_MESSAGE, DKIM_ED25519, DKIM_OFF, DKIM_RSA, DOT_APART, DOT_APART_NODELAY,
                      FLOOR, HERALD, LOAD_DURING_DKIM_COST, LOAD_DURING_STATUS_COST, REPLAY, SIGN_ED25519, SIGN_OFF,
                      SIGN_RSA, SKIPPED_BEFORE, STATUS_AFTER, STATUS_BEFORE, STATUS_NO_SUPPRESSION, TRACED, WARM,
                      Latencies, Measurement)

CONCURRENCIES = (1, 4, 16)
ROUND_TRIPS_MS = (0.0, 20.0)
STATUS_COST, DKIM, CHUNKING, FEATURES = "status-cost", "dkim", "chunking", "features"  # the sections --only can name
CHUNKING_RTT_MS = 20.0
OLD_TREE_DIR = REPO_ROOT / "var" / "bench" / "before-status"
BEFORE_25_TREE_DIR = REPO_ROOT / "var" / "bench" / "before-25"
# The XOAUTH2 variant's client at the token endpoint (tests/support/oauth_server.py, in this process).
OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPE = "bench-client", "bench-client-secret", "https://mail.bench/.default"
OAUTH_TOKEN_PREFIX = "at-"  # what that endpoint's access tokens begin with; the bench SMTP server checks it
OAUTH_TOKEN_LIFETIME = 3600.0  # as Entra ID and Google issue: no token expires during a run
IDEMPOTENCY_SECRET = "bench-idempotency-secret-0123456789abcdef"  # production sets one (docs/DEPLOYMENT.md)


@dataclass(frozen=True)
class Budget:
    max_requests: int  # per measurement
    seconds: float  # per measurement
    warmup_requests: int  # per herald-smtp instance, before its first measurement, not reported
    replay_keys: int  # finished keys the replay measurement cycles through
    status_rounds: int  # how often each variant of the status cost measurement is measured, in turn
    feature_rounds: int  # the same for the feature-set section (7 services: fewer rounds keep it near 2 minutes)


FULL = Budget(max_requests=50_000, seconds=5.0, warmup_requests=96, replay_keys=200, status_rounds=4,
              feature_rounds=3)
QUICK = Budget(max_requests=5_000, seconds=1.0, warmup_requests=32, replay_keys=20, status_rounds=2,
               feature_rounds=2)


@dataclass
class Context:
    budget: Budget
    workdir: Path
    certs: Certificates
    redis_url: str
    use_wrk: bool
    say: Callable[[str], None]
    measurements: list[Measurement]
    remarks: dict[str, str] = field(default_factory=dict)  # per section, printed by the report (Run.remarks)
    prefixes: itertools.count = field(default_factory=lambda: itertools.count(1))

    def prefix(self) -> str:
        """A key prefix no earlier measurement of this run used (so every fresh key is a real send)."""
        return f"b{next(self.prefixes)}"

    @property
    def http_generator(self) -> str:
        return "wrk" if self.use_wrk else "python"

    def record(self, measurement: Measurement) -> Measurement:
        self.measurements.append(measurement)
        lat = measurement.latencies
        self.say(f"  {measurement.label:36} rtt {_text(measurement.rtt_ms):>4} c={measurement.concurrency:<2} "
                 f"{measurement.generator:7} {lat.requests:5} req {lat.rps:8.1f}/s  p50 {lat.p50_ms:7.2f} "
                 f"p95 {lat.p95_ms:7.2f} p99 {lat.p99_ms:7.2f} ms  errors {lat.errors}")
        return measurement


def _text(value) -> str:
    return "-" if value is None else f"{value:g}"


def run(budget: Budget, use_wrk: bool, say: Callable[[str], None],
        only: str | None = None) -> tuple[list[Measurement], dict[str, str]]:
    """The measurements and the remarks of every section, or of the section `only` names."""
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as directory:
        workdir = Path(directory)
        certs = Certificates.create(workdir)
        with RedisServer(workdir / "redis") as redis_server:
            context = Context(budget, workdir, certs, redis_server.url, use_wrk, say, [])
            if only is None:
                measure_floor(context)
                for rtt_ms in ROUND_TRIPS_MS:
                    for pipelining in (True, False):
                        measure_smtp_setups(context, rtt_ms, pipelining)
            if only in (None, STATUS_COST):
                measure_status_cost(context)
            if only in (None, DKIM):
                measure_dkim_cost(context)
            if only in (None, CHUNKING):
                measure_chunking(context)
            if only in (None, FEATURES):
                measure_features(context)
            return context.measurements, context.remarks


def herald_env(context: Context, smtp: BenchSmtpProcess | None) -> dict[str, str]:
    env = {"API_KEY": workload.API_KEY, "REDIS_URL": context.redis_url, "SMTP_FROM": workload.SENDER,
           "SMTP_FROM_NAME": "Herald", "SMTP_TIMEOUT_SECONDS": "10"}
    if smtp is not None:
        env.update(SMTP_HOST=smtp.host, SMTP_PORT=str(smtp.port), SMTP_USE_STARTTLS="true",
                   SMTP_TLS_CA_FILE=str(context.certs.ca_file), SMTP_USER=workload.SMTP_USER,
                   SMTP_PASSWORD=workload.SMTP_PASSWORD)
    return env


def http_measurement(context: Context, service: HeraldProcess, generator: str, concurrency: int,
                     replay_keys: int = 0, prefix: str | None = None) -> Latencies:
    budget, prefix = context.budget, prefix or context.prefix()
    if generator == "wrk":
        latencies, summary = wrk_runner.run(service.url, concurrency, budget.max_requests, budget.seconds, prefix,
                                            replay_keys)
        if replay_keys and summary["replayed"] != summary["ok"]:
            raise RuntimeError(f"only {summary['replayed']} of {summary['ok']} replay answers were replays")
        return latencies
    return loadgen.http_load("127.0.0.1", service.port, concurrency, budget.max_requests, budget.seconds, prefix,
                             replay_keys)


def measure_floor(context: Context) -> None:
    context.say("HTTP floor (trivial endpoint, herald-smtp's gunicorn options)")
    generators = ["wrk", "python"] if context.use_wrk else ["python"]
    with floor_process(context.workdir, herald_env(context, None)) as floor:
        for concurrency in CONCURRENCIES:
            for generator in generators:
                served(context, floor, None, Measurement(FLOOR, None, None, concurrency, generator, None),
                       partial(http_measurement, context, floor, generator, concurrency))


def measure_smtp_setups(context: Context, rtt_ms: float, pipelining: bool) -> None:
    context.say(f"SMTP server: round trip {rtt_ms:g} ms, PIPELINING {'on' if pipelining else 'off'}")
    with BenchSmtpProcess(context.workdir, context.certs, workload.SMTP_USER, workload.SMTP_PASSWORD,
                          rtt_ms, pipelining) as smtp:
        if pipelining:
            measure_raw_smtp(context, smtp)
        with herald_process(context.workdir, herald_env(context, smtp)) as herald:
            measure_herald(context, smtp, herald, HERALD)
            if pipelining and rtt_ms == 0:
                measure_replay(context, smtp, herald)
        if pipelining and rtt_ms == 0:
            measure_traced(context, smtp)


def measure_chunking(context: Context) -> None:
    """herald-smtp against a server that offers CHUNKING: MAIL, RCPT and BDAT LAST with the message in one write,
    next to the connect-per-message baseline on the same server (smtplib does not use BDAT)."""
    rtt_ms = CHUNKING_RTT_MS
    context.say(f"SMTP server: round trip {rtt_ms:g} ms, PIPELINING and CHUNKING on")
    with BenchSmtpProcess(context.workdir, context.certs, workload.SMTP_USER, workload.SMTP_PASSWORD,
                          rtt_ms, pipelining=True, chunking=True) as smtp:
        budget = context.budget
        target = smtp_target(context, smtp)
        measure_smtplib(context, smtp, CONNECT_PER_MESSAGE_CHUNKING, 1,
                        lambda: smtp_clients.connect_per_message(target, budget.max_requests, budget.seconds))
        with herald_process(context.workdir, herald_env(context, smtp)) as herald:
            measure_herald(context, smtp, herald, HERALD_CHUNKING)


def measure_herald(context: Context, smtp: BenchSmtpProcess, herald: HeraldProcess, setup: str) -> None:
    """Warm `herald` up, then measure fresh sends at each concurrency against `smtp`."""
    warm_up(context, herald)
    for concurrency in CONCURRENCIES:
        served(context, herald, smtp,
               Measurement(setup, smtp.delay_ms, smtp.pipelining, concurrency, context.http_generator, None),
               partial(http_measurement, context, herald, context.http_generator, concurrency))


def measure_raw_smtp(context: Context, smtp: BenchSmtpProcess) -> None:
    budget = context.budget
    target = smtp_target(context, smtp)
    runs = [(CONNECT_PER_MESSAGE, 1, lambda: smtp_clients.connect_per_message(
        target, budget.max_requests, budget.seconds))]
    runs.append((WARM, 1, lambda: smtp_clients.warm_connections(target, 1, budget.max_requests, budget.seconds)))
    for setup, nodelay in ((DOT_APART, False), (DOT_APART_NODELAY, True)):
        runs.append((setup, 1, lambda nodelay=nodelay: smtp_clients.dot_written_apart(
            target, nodelay, budget.max_requests, budget.seconds)))
    for concurrency in CONCURRENCIES:
        runs.append((CEILING, concurrency, lambda c=concurrency: smtp_clients.warm_connections(
            target, c, budget.max_requests, budget.seconds)))
    for setup, concurrency, measure in runs:
        measure_smtplib(context, smtp, setup, concurrency, measure)


def smtp_target(context: Context, smtp: BenchSmtpProcess) -> smtp_clients.SmtpTarget:
    return smtp_clients.SmtpTarget(smtp.host, smtp.port, str(context.certs.ca_file), workload.SMTP_USER,
                                   workload.SMTP_PASSWORD)


def measure_smtplib(context: Context, smtp: BenchSmtpProcess, setup: str, concurrency: int,
                    measure: Callable[[], Latencies]) -> None:
    """One raw smtplib baseline against `smtp`, with the server's counts and CPU."""
    smtp.reset()
    server_cpu = cpu_seconds(smtp.pid)
    latencies = measure()
    context.record(Measurement(setup, smtp.delay_ms, smtp.pipelining, concurrency, "smtplib", latencies,
                               smtp=smtp_counts(smtp, server_cpu)))


def smtp_counts(smtp: BenchSmtpProcess, cpu_before: float) -> dict:
    return {**smtp.stats(), "server_cpu_seconds": round(cpu_seconds(smtp.pid) - cpu_before, 3)}


def served(context: Context, service: HeraldProcess, smtp: BenchSmtpProcess | None, measurement: Measurement,
           measure: Callable[[], Latencies]) -> Measurement:
    """Run `measure` against a gunicorn service; fill in its latencies, CPU per request, peak RSS, SMTP counts."""
    if smtp is not None:
        smtp.reset()
        smtp_cpu = cpu_seconds(smtp.pid)
    cpu = cpu_seconds(service.pid)
    measurement.latencies = measure()
    used = cpu_seconds(service.pid) - cpu
    if measurement.latencies.requests:
        measurement.cpu_ms_per_request = used * 1000 / measurement.latencies.requests
    measurement.peak_rss_mb = worker_peak_rss_mb(service.pid)
    if smtp is not None:
        measurement.smtp = smtp_counts(smtp, smtp_cpu)
    return context.record(measurement)


def warm_up(context: Context, herald: HeraldProcess) -> None:
    """Open pooled SMTP connections in every worker before the first measurement; not reported."""
    loadgen.http_load("127.0.0.1", herald.port, 16, context.budget.warmup_requests, 30.0, context.prefix())


def measure_traced(context: Context, smtp: BenchSmtpProcess) -> None:
    """herald-smtp with tracing on (every span exported over OTLP/HTTP to a local sink), at the highest
    concurrency: what tracing costs when it is on, next to the same setup with it off."""
    concurrency = CONCURRENCIES[-1]
    with OtlpReceiver(decode=False) as sink:
        env = herald_env(context, smtp) | {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                                           "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with herald_process(context.workdir, env) as herald:
            warm_up(context, herald)
            measurement = served(context, herald, smtp,
                                 Measurement(TRACED, smtp.delay_ms, smtp.pipelining, concurrency,
                                             context.http_generator, None),
                                 partial(http_measurement, context, herald, context.http_generator, concurrency))
        measurement.smtp["otlp_exports"] = sink.exports  # after the stop: the last batch is flushed at exit


def measure_replay(context: Context, smtp: BenchSmtpProcess, herald: HeraldProcess) -> None:
    """Finish `replay_keys` keys (real sends), then send them again and again: every answer a replay, no SMTP."""
    keys = context.budget.replay_keys
    prefix = context.prefix()
    primed = loadgen.http_load("127.0.0.1", herald.port, 4, keys, 60.0, prefix, replay_keys=keys)
    if primed.errors or primed.requests < keys:
        raise RuntimeError(f"priming the replay keys failed: {primed}")
    for concurrency in CONCURRENCIES:
        measurement = served(context, herald, smtp,
                             Measurement(REPLAY, smtp.delay_ms, smtp.pipelining, concurrency,
                                         context.http_generator, None),
                             partial(http_measurement, context, herald, context.http_generator, concurrency, keys,
                                     prefix))
        if measurement.smtp["mails"]:
            raise RuntimeError(f"a replay reached the SMTP server ({measurement.smtp['mails']} mails)")



def measure_status_cost(context: Context) -> None:
    """Before / after message status and the suppression list: the three herald-smtp variants run at once against
    one SMTP server and one Redis, and are measured in turn, so the machine's load falls on all of them alike."""
    concurrency = CONCURRENCIES[-1]
    context.say(f"Message status and suppression: before ({status_cost.BEFORE_COMMIT}) / after, round trip 0 ms, "
                f"PIPELINING on, concurrency {concurrency}, load average {_load()}")
    load_before = _load()
    with ExitStack() as stack:
        smtp = stack.enter_context(BenchSmtpProcess(context.workdir, context.certs, workload.SMTP_USER,
                                                    workload.SMTP_PASSWORD, 0.0, True))
        services = _start(context, stack, _status_variants(context, smtp), STATUS_BEFORE,
                          f"the tree before ({status_cost.BEFORE_COMMIT})", SKIPPED_BEFORE)
        client = stack.enter_context(redis.Redis.from_url(context.redis_url, socket_timeout=10))
        in_rounds(context, services,
                  lambda setup, herald: measure_with_redis(context, client, herald, smtp, setup, concurrency))
    context.remarks[LOAD_DURING_STATUS_COST] = f"{load_before} at the start of the section, {_load()} at its end"


def in_rounds(context: Context, services: dict[str, HeraldProcess],
              measure: Callable[[str, HeraldProcess], Measurement], rounds: int | None = None) -> None:
    """Each service measured once per round, `rounds` rounds (`status_rounds` unless given), each round starting
    with the next one: services that run at once and are measured seconds apart share the machine's load alike."""
    setups = list(services)
    for turn in range(context.budget.status_rounds if rounds is None else rounds):
        shift = turn % len(setups)
        for setup in setups[shift:] + setups[:shift]:
            measure(setup, services[setup])


def measure_dkim_cost(context: Context) -> None:
    """DKIM signing: the signature alone, then herald-smtp without a key, with RSA 2048 and with Ed25519, running
    at once against one SMTP server and one Redis and measured in turn."""
    concurrency = CONCURRENCIES[-1]
    context.say(f"DKIM signing: none / RSA 2048 / Ed25519, round trip 0 ms, PIPELINING on, concurrency "
                f"{concurrency}, load average {_load()}")
    load_before = _load()
    keys = dkim_cost.write_keys(context.workdir / "dkim-keys")
    budget = context.budget
    for setup, key in ((SIGN_OFF, None), (SIGN_RSA, keys[DKIM_RSA]), (SIGN_ED25519, keys[DKIM_ED25519])):
        latencies, cpu_ms = dkim_cost.signing_alone(key, budget.max_requests, min(budget.seconds, 2.0))
        context.record(Measurement(setup, None, None, 1, "in-process", latencies, cpu_ms_per_request=cpu_ms))
    with ExitStack() as stack:
        smtp = stack.enter_context(BenchSmtpProcess(context.workdir, context.certs, workload.SMTP_USER,
                                                    workload.SMTP_PASSWORD, 0.0, True))
        env = herald_env(context, smtp)
        services = {}
        for setup, extra in ((DKIM_OFF, {}), (DKIM_RSA, dkim_cost.dkim_env(keys[DKIM_RSA])),
                             (DKIM_ED25519, dkim_cost.dkim_env(keys[DKIM_ED25519]))):
            services[setup] = stack.enter_context(herald_process(context.workdir, env | extra))
            warm_up(context, services[setup])
        in_rounds(context, services, lambda setup, herald: served(
            context, herald, smtp, Measurement(setup, 0.0, True, concurrency, context.http_generator, None),
            partial(http_measurement, context, herald, context.http_generator, concurrency)))
    context.remarks[LOAD_DURING_DKIM_COST] = f"{load_before} at the start of the section, {_load()} at its end"


def _status_variants(context: Context, smtp: BenchSmtpProcess):
    """(setup, herald-smtp not started yet) for each variant that can run; why one cannot goes to the remarks."""
    env = herald_env(context, smtp)
    old = _old_tree_process(context, env, status_cost.BEFORE_COMMIT, OLD_TREE_DIR, "the tree before", SKIPPED_BEFORE)
    if old is not None:
        yield STATUS_BEFORE, old
    yield STATUS_AFTER, herald_process(context.workdir, env)
    yield STATUS_NO_SUPPRESSION, herald_process(context.workdir, env | {"SUPPRESSION_TTL_SECONDS": "0"})


def _old_tree_process(context: Context, env: dict[str, str], commit: str, into: Path, name: str,
                      remark: str) -> HeraldProcess | None:
    """herald-smtp (not started) from `commit`'s tree, extracted under `into` and first on PYTHONPATH; None, with
    why in the remarks under `remark`, when it cannot run."""
    tree = status_cost.old_tree(REPO_ROOT, into, commit)
    if tree.missing:
        _skip(context, f"{name} ({tree.commit}) was not measured: {tree.missing}", remark)
        return None
    old = herald_process(context.workdir, env, first_on_path=tree.path)
    found = status_cost.imported_from(old.env, context.workdir)
    if found is None or found != tree.path.resolve() / "herald_smtp":
        _skip(context, f"{name} ({tree.commit}) was not measured: with it first on PYTHONPATH, herald_smtp was "
                       f"imported from {found}, not from {tree.path}", remark)
        return None
    context.say(f"  {name} is imported from {found}")
    return old


def _start(context: Context, stack: ExitStack, variants, before: str, before_name: str, remark: str,
           cold: tuple[str, ...] = ()) -> dict:
    """Each variant's service started (and warmed up, but those in `cold`); the old tree's may not start here:
    that is said in the report, and the others are measured."""
    services = {}
    for setup, service in variants:
        try:
            services[setup] = stack.enter_context(service)
        except RuntimeError as exc:
            if setup != before:
                raise
            _skip(context, f"{before_name} was not measured: it did not start ({str(exc).splitlines()[0]})", remark)
            continue
        if setup not in cold:
            warm_up(context, services[setup])
    return services


def _skip(context: Context, why: str, remark: str = SKIPPED_BEFORE) -> None:
    context.remarks[remark] = why
    context.say(f"  {why}")


def measure_features(context: Context) -> None:
    """CPU per send by feature set (issue #25): herald-smtp's variants and the HTTP floor run at once against one SMTP
    server (XOAUTH2 offered too) and one Redis, and are measured in turn; the floor in the same rounds, so every
    ratio to it is of figures measured under the same load."""
    concurrency = CONCURRENCIES[-1]
    context.say(f"CPU per send by feature set: before #25 ({status_cost.BEFORE_25_COMMIT}) / current, round trip 0 ms, "
                f"PIPELINING on, concurrency {concurrency}, load average {_load()}")
    load_before = _load()
    keys = dkim_cost.write_keys(context.workdir / "dkim-keys")
    with ExitStack() as stack:
        smtp = stack.enter_context(BenchSmtpProcess(context.workdir, context.certs, workload.SMTP_USER,
                                                    workload.SMTP_PASSWORD, 0.0, True,
                                                    oauth_token_prefix=OAUTH_TOKEN_PREFIX))
        oauth = stack.enter_context(OAuthTestServer(token_lifetime=OAUTH_TOKEN_LIFETIME))
        oauth.register_client(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPE)
        services = _start(context, stack, _feature_variants(context, smtp, oauth, keys), FEATURES_BEFORE,
                          f"the tree before #25 ({status_cost.BEFORE_25_COMMIT})", SKIPPED_FEATURES_BEFORE,
                          cold=(FEATURES_FLOOR,))
        in_rounds(context, services, lambda setup, service: _measure_feature_set(context, setup, service, smtp, oauth),
                  context.budget.feature_rounds)
    context.remarks[LOAD_DURING_FEATURES] = f"{load_before} at the start of the section, {_load()} at its end"


def _feature_variants(context: Context, smtp: BenchSmtpProcess, oauth: OAuthTestServer, keys: dict[str, Path]):
    """(setup, service not started yet) for each variant of the feature-set section that can run."""
    every = herald_env(context, smtp) | {"IDEMPOTENCY_SECRET": IDEMPOTENCY_SECRET}
    old = _old_tree_process(context, every, status_cost.BEFORE_25_COMMIT, BEFORE_25_TREE_DIR, "the tree before #25",
                            SKIPPED_FEATURES_BEFORE)
    if old is not None:
        yield FEATURES_BEFORE, old
    yield FEATURES_NO_SUPPRESSION, herald_process(context.workdir, every | {"SUPPRESSION_TTL_SECONDS": "0"})
    yield FEATURES_PASSWORD, herald_process(context.workdir, every)
    with_oauth = {name: value for name, value in every.items() if name != "SMTP_PASSWORD"}
    with_oauth |= {"SMTP_OAUTH_TOKEN_URL": oauth.token_url, "SMTP_OAUTH_CLIENT_ID": OAUTH_CLIENT_ID,
                   "SMTP_OAUTH_CLIENT_SECRET": OAUTH_CLIENT_SECRET, "SMTP_OAUTH_SCOPE": OAUTH_SCOPE}
    yield FEATURES_OAUTH, herald_process(context.workdir, with_oauth)
    yield FEATURES_ED25519, herald_process(context.workdir, every | dkim_cost.dkim_env(keys[DKIM_ED25519]))
    yield FEATURES_RSA, herald_process(context.workdir, every | dkim_cost.dkim_env(keys[DKIM_RSA]))
    yield FEATURES_FLOOR, floor_process(context.workdir, herald_env(context, None))


def _measure_feature_set(context: Context, setup: str, service: HeraldProcess, smtp: BenchSmtpProcess,
                         oauth: OAuthTestServer) -> Measurement:
    """served() at c=16 with fresh keys; the floor without the SMTP server's counts, the XOAUTH2 variant with the
    token endpoint's requests during it (0 when the token is cached, as it should be)."""
    concurrency = CONCURRENCIES[-1]
    measure = partial(http_measurement, context, service, context.http_generator, concurrency)
    if setup == FEATURES_FLOOR:
        measurement = served(context, service, None,
                             Measurement(setup, None, None, concurrency, context.http_generator, None), measure)
        context.say(f"  {'':36} HTTP floor {_fixed(measurement.cpu_ms_per_request)} CPU ms/req")
        return measurement
    fetches = oauth.fetches
    measurement = served(context, service, smtp,
                         Measurement(setup, 0.0, True, concurrency, context.http_generator, None), measure)
    if setup == FEATURES_OAUTH:
        measurement.smtp["oauth_token_fetches"] = oauth.fetches - fetches
        if not measurement.smtp.get("oauth_auths") and measurement.smtp.get("auths"):
            raise RuntimeError("the XOAUTH2 variant logged in with a password")
    context.say(f"  {'':36} herald-smtp {_fixed(measurement.cpu_ms_per_request)} CPU ms/req")
    return measurement


def measure_with_redis(context: Context, client: redis.Redis, herald: HeraldProcess, smtp: BenchSmtpProcess,
                       setup: str, concurrency: int) -> Measurement:
    """served(), with Redis's round trips, calls and CPU during it."""
    before = status_cost.RedisCounts.from_info(client.info("all"))
    measurement = served(context, herald, smtp,
                         Measurement(setup, 0.0, True, concurrency, context.http_generator, None),
                         partial(http_measurement, context, herald, context.http_generator, concurrency))
    measurement.redis = status_cost.redis_delta(before, status_cost.RedisCounts.from_info(client.info("all")))
    requests = measurement.latencies.requests
    round_trips = status_cost.per_request(measurement.redis["round_trips"], requests)
    redis_cpu_ms = status_cost.per_request(measurement.redis["cpu_seconds"] * 1000, requests)
    context.say(f"  {'':36} Redis {_fixed(round_trips)} round trips/req, {_fixed(redis_cpu_ms, 3)} CPU ms/req; "
                f"herald-smtp {_fixed(measurement.cpu_ms_per_request)} CPU ms/req")
    return measurement


def _fixed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
