"""`make bench`: herald-smtp against a benchmark SMTP server, with the baselines that say what its figures mean.

Modules: smtp_server (the benchmark SMTP server process), processes (starting
and stopping our own servers), floor_app (the trivial endpoint on herald-smtp's
gunicorn configuration), workload (request bodies and keys), loadgen (the
Python load generator and the closed-loop thread runner), wrk (wrk with its
Lua script), smtp_clients (raw smtplib baselines), usage (peak RSS and CPU of
gunicorn's processes), plan (which measurements, in which order), results
(the figures), calibration (the Python generator against wrk), report
(BENCHMARKS.md), plot (benchmarks.png), __main__ (the command). Beside it,
`python -m bench.profile` (profile): py-spy on herald-smtp's workers under
fresh sends, and CPU per request of the current tree against another commit's.
"""
