# gunicorn settings for `gunicorn -c gunicorn.conf.py wsgi:app` (the container entrypoint).
# `herald-smtp serve` applies the same options; both come from herald_smtp/tools/serve.py.
from herald_smtp.config import load_settings_or_exit
from herald_smtp.tools.serve import gunicorn_options, prepare_metrics_dir

# prepare_metrics_dir exports the metrics directory before anything imports prometheus_client.
globals().update(gunicorn_options(prepare_metrics_dir(load_settings_or_exit())))
