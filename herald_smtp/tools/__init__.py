"""The `herald-smtp` command and what it runs: the gunicorn server, the doctor, the capture sink."""
