"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from herald_smtp.web.app import create_app
from herald_smtp.config import load_settings_or_exit
from herald_smtp.logs import configure_logging

settings = load_settings_or_exit()
configure_logging(settings)
app = create_app(settings)
