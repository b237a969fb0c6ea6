"""The fault run: steady load on herald-smtp under gunicorn while Redis, the SMTP server and a worker fail.

    load.py        the load generator (N threads, a steady offered rate, a share of duplicate keys)
                   and the /readyz probe; every answer is recorded (status, body, key, times)
    smtp_proxy.py  a TCP relay in front of the SMTP test server that can trickle its replies
    scenarios.py   the bench (real Redis with AOF, aiosmtpd with STARTTLS and AUTH, the relay,
                   herald-smtp as a real gunicorn), the plans (full, reduced) and the faults
    counting.py    what the SMTP server received, per idempotency key: mails lost, keys doubled
    report.py      docs/RELIABILITY.md from a run's figures

`make faults` (python -m tests.faults --full --report docs/RELIABILITY.md) runs the full set and
writes the report; tests/test_faults.py runs the reduced set inside `make test` and asserts the
same invariants. Loopback only, bounded in requests and time; every process it starts it stops.

It lives under tests/ because it is test tooling built on tests/support (the real servers) and is
never shipped (setup.cfg packages herald_smtp only); pytest collects only test_*.py, so nothing
here runs twice.
"""
