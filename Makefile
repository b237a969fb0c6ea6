# Two commands on a fresh machine: `make run` and `make test`.
# Needs only python3 (3.11+), pip and make; everything else goes into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SINK_PORT ?= 2525
MAIL_DIR  ?= var/mail

.PHONY: run test test-all test-topologies test-mta failover faults bench install install-test clean

run: $(VENV)/.installed-dev .env
	@mkdir -p $(MAIL_DIR)
	@echo "herald-smtp on :8084; mails land in $(MAIL_DIR)/*.eml (capture SMTP server on 127.0.0.1:$(SINK_PORT))"
	@$(BIN)/herald-smtp sink --port $(SINK_PORT) --dir $(MAIL_DIR) & sink=$$!; \
	 trap 'kill $$sink 2>/dev/null' EXIT INT TERM; \
	 $(BIN)/herald-smtp serve

# The static checks first (ruff, then mypy; configured in pyproject.toml): a finding fails `make test`
# with the tool's output, before any server starts. The alert rule tests (promtool test rules) run when
# promtool is on PATH; otherwise the run ends with one line saying they did not run (tests/conftest.py).
test: $(VENV)/.installed-test
	$(BIN)/ruff check herald_smtp tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The full fault run (tests/faults/): steady load while Redis, the SMTP server and a worker fail, every scenario
# against an SMTP server without CHUNKING, then with it (BDAT); writes docs/RELIABILITY.md from the run's figures
# and fails if an invariant broke. About 6 minutes.
# (`make test` runs a reduced version: tests/test_faults.py.)
faults: $(VENV)/.installed-test
	$(BIN)/python -m tests.faults --full --report docs/RELIABILITY.md

# Every Redis topology REDIS_URL can name (cluster, Sentinel, TLS, unix socket) under two gunicorn services
# each: tests/test_topologies.py, marked `topologies` and so left out of `make test`. A few minutes.
test-topologies: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m topologies tests/test_topologies.py $(PYTEST_ARGS)

# A real Postfix (the relay, STARTTLS + AUTH, DSN) and Dovecot (the bounce mailbox over IMAP), private instances
# on 127.0.0.1 started by the tests (tests/support/mta.py): tests marked `mta`, left out of `make test`.
# Needs root and the Debian packages postfix and dovecot-imapd (.ci/run installs them). Under a minute.
test-mta: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m mta tests/test_mta_bed.py tests/test_bounces_mta.py $(PYTEST_ARGS)

# A measurement, not a test: SIGKILL the Sentinel master under load, in open and closed mode; prints the
# figures that docs/DEPLOYMENT.md (Redis topologies) quotes. About a minute, 127.0.0.1 only.
failover: $(VENV)/.installed-test
	$(BIN)/python -m tests.sentinel_failover

# Everything: the suite (with the reduced fault run), the Redis topologies, the Postfix + Dovecot bed, then the
# full fault run.
test-all: test test-topologies test-mta faults

# The benchmark (bench/, issue #14): herald-smtp against a benchmark SMTP server at 0 and 20 ms round trips,
# PIPELINING on and off, with the baselines; rewrites docs/BENCHMARKS.md and docs/benchmarks.png. Loopback only,
# starts and stops its own servers, under 14 minutes (about 8). Uses wrk when it is on PATH, else a Python load generator.
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench --report docs/BENCHMARKS.md --plot docs/benchmarks.png \
	  --calibration docs/benchmarks-calibration.json --json var/bench/results.json

install: $(VENV)/.installed-dev
install-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-dev: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(VENV)/.installed-test: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,test]'
	@touch $@

$(VENV)/.installed-bench: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,test,bench]'
	@touch $@

.env:
	cp .env.example .env

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
