# gunicorn settings for `gunicorn -c gunicorn.conf.py wsgi:app` (the container entrypoint).
# `herald-smtp serve` applies the same options; both come from herald_smtp/server.py.
from herald_smtp.config import load_settings_or_exit
from herald_smtp.server import gunicorn_options, on_starting_hook

_settings = load_settings_or_exit()
globals().update(gunicorn_options(_settings))
on_starting = on_starting_hook(_settings)
