# gunicorn settings for `gunicorn -c gunicorn.conf.py wsgi:app` (the container entrypoint).
# `herald-smtp serve` applies the same options; both come from herald_smtp/server.py.
from herald_smtp.config import load_settings_or_exit
from herald_smtp.server import gunicorn_options, prepare_metrics_dir

prepare_metrics_dir()  # before anything imports prometheus_client
globals().update(gunicorn_options(load_settings_or_exit()))
