# Two commands on a fresh machine: `make run` and `make test`.
# Needs only python3 (3.11+), pip and make; everything else goes into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SINK_PORT ?= 2525
MAIL_DIR  ?= var/mail

.PHONY: run test test-all test-topologies failover faults install install-test clean

run: $(VENV)/.installed-dev .env
	@mkdir -p $(MAIL_DIR)
	@echo "herald-smtp on :8084; mails land in $(MAIL_DIR)/*.eml (capture SMTP server on 127.0.0.1:$(SINK_PORT))"
	@$(BIN)/herald-smtp sink --port $(SINK_PORT) --dir $(MAIL_DIR) & sink=$$!; \
	 trap 'kill $$sink 2>/dev/null' EXIT INT TERM; \
	 $(BIN)/herald-smtp serve

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The full fault run (tests/faults/): steady load while Redis, the SMTP server and a worker fail;
# writes docs/RELIABILITY.md from the run's figures and fails if an invariant broke. About 3 minutes.
# (`make test` runs a reduced version: tests/test_faults.py.)
faults: $(VENV)/.installed-test
	$(BIN)/python -m tests.faults --full --report docs/RELIABILITY.md

# Every Redis topology REDIS_URL can name (cluster, Sentinel, TLS, unix socket) under two gunicorn services
# each: tests/test_topologies.py, marked `topologies` and so left out of `make test`. A few minutes.
test-topologies: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m topologies tests/test_topologies.py $(PYTEST_ARGS)

# A measurement, not a test: SIGKILL the Sentinel master under load, in open and closed mode; prints the
# figures that docs/DEPLOYMENT.md (Redis topologies) quotes. About a minute, 127.0.0.1 only.
failover: $(VENV)/.installed-test
	$(BIN)/python -m tests.sentinel_failover

# Everything: the suite (with the reduced fault run), the Redis topologies, then the full fault run.
test-all: test test-topologies faults

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

.env:
	cp .env.example .env

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info
