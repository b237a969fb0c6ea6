"""The per-process objects a request needs: settings, store, send service, metrics.

create_app() builds one Services and keeps it in `app.extensions`; blueprints
read it through services() instead of globals.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..config import Settings
from ..idempotency.base import Store
from ..metrics import Metrics
from ..sending.service import SendService

EXTENSION = "herald_smtp"


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    send: SendService
    metrics: Metrics


def services() -> Services:
    return current_app.extensions[EXTENSION]
