"""The configuration: read from the environment and `.env`, parsed and validated once, at startup.

    settings.py    the Settings type (and Rate, Relay); which fields are secrets and how each is shown
    parsers.py     the parsers of single values (numbers, ports, hosts, addresses, rates ...)
    relay_urls.py  the SMTP_FALLBACK_URLS grammar
    loading.py     the variable table, .env and the environment, the checks across variables

A bad value raises ConfigError whose message is one line naming the variable and the expected form; the
entry points print it and exit. Secret values, and any part of them, never appear in those messages.
"""

from .loading import _VARIABLES, ConfigError, load_settings, load_settings_or_exit, settings_from
from .settings import IMPLICIT_TLS, PLAIN, SERVICE_NAME, STARTTLS, FailureMode, Rate, Relay, Settings, TlsMode

__all__ = ["ConfigError", "FailureMode", "IMPLICIT_TLS", "PLAIN", "Rate", "Relay", "SERVICE_NAME", "STARTTLS",
           "Settings", "TlsMode", "_VARIABLES", "load_settings", "load_settings_or_exit", "settings_from"]
