"""Operational endpoints: /healthz (liveness), /readyz (readiness), /metrics (Prometheus).

Readiness means "a send could succeed here now" (docs/DEPLOYMENT.md, Readiness):

- `ready` (200): every check passed;
- `degraded` (200): only the store failed and IDEMPOTENCY_FAILURE_MODE=open, so
  sends still go out, without idempotency. Answering 503 here would take every
  replica out of the Service at the same moment for an outage they can ride out;
- `not_ready` (503): SMTP not configured, every relay's circuit open, the store down in
  closed mode, or this worker draining after SIGTERM (start_draining, called
  from the SIGTERM handler that tools/serve.py chains in each gunicorn worker).

A check's `detail` is a short fixed reason: the probe is open to anyone who
reaches the port, so the raw cause (the Redis error with host and port) goes
only to the log line and herald_smtp_idempotency_store_errors{operation="ping"}.
The one exception is the circuit check, which names each relay (host:port)
with its circuit state, so that an operator sees which relay is failing.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, current_app, jsonify

from ..config import SERVICE_NAME, FailureMode
from ..idempotency.base import StoreUnavailable
from ..smtp.breaker import OPEN
from .services import services

log = logging.getLogger("herald_smtp.health")

bp = Blueprint("health", __name__)

# app.extensions key of the draining flag; set once, never cleared (the worker is exiting).
_DRAINING = "herald_smtp.draining"

_STORE_DOWN = {
    FailureMode.OPEN: "store unreachable; sends go out without idempotency (IDEMPOTENCY_FAILURE_MODE=open)",
    FailureMode.CLOSED: "store unreachable; sends are refused (IDEMPOTENCY_FAILURE_MODE=closed)",
}


def start_draining(app: Flask) -> None:
    """From now on this process's /readyz answers 503: it is shutting down.

    Safe in a signal handler: one dict assignment, no lock, no I/O.
    """
    app.extensions[_DRAINING] = True


# provide_automatic_options=False: OPTIONS gets the JSON 405, not an empty 200.
@bp.get("/healthz", provide_automatic_options=False)
def healthz():
    # Checks nothing external, by design: a Redis or SMTP outage must not restart pods.
    return jsonify(status="healthy", service=SERVICE_NAME)


@bp.get("/readyz", provide_automatic_options=False)
def readyz():
    """200 `ready` or `degraded` when a send could succeed here now, else 503 `not_ready`.

    No SMTP connection is opened here: the breaker's state already says whether
    the server has been reachable, without a probe per kubelet tick.
    """
    s = services()
    checks = {
        "store": _store_check(s),
        "smtp": _smtp_check(s.settings),
        "circuit": _circuit_check(s),
        "shutdown": _shutdown_check(),
    }
    failed = {name for name, check in checks.items() if not check["ok"]}
    if not failed:
        status = "ready"
    elif failed == {"store"} and s.settings.idempotency_failure_mode == FailureMode.OPEN:
        status = "degraded"
    else:
        status = "not_ready"
    s.metrics.not_ready.set(1 if status == "not_ready" else 0)
    response = jsonify(status=status, service=SERVICE_NAME, checks=checks)
    response.status_code = 503 if status == "not_ready" else 200
    return response


@bp.get("/metrics", provide_automatic_options=False)
def metrics():
    body, content_type = services().metrics.exposition()
    return Response(body, content_type=content_type)


def _store_check(s) -> dict:
    try:
        s.store.ping()
    except StoreUnavailable as exc:
        mode = s.settings.idempotency_failure_mode
        s.metrics.store_errors.labels("ping").inc()
        log.error("readiness: idempotency store unavailable", extra={"cause": str(exc), "failure_mode": mode})
        return {"ok": False, "detail": _STORE_DOWN[mode]}
    return {"ok": True, "detail": f"{s.store.name} store answers"}


def _smtp_check(settings) -> dict:
    if not settings.smtp_configured:
        return {"ok": False, "detail": "SMTP not configured (SMTP_HOST and SMTP_FROM are required)"}
    mode = "implicit TLS" if settings.smtp_use_tls else "STARTTLS" if settings.smtp_use_starttls else "plain"
    return {"ok": True, "detail": f"configured ({mode})"}


def _circuit_check(s) -> dict:
    """Ready while at least one relay's circuit is not open; the detail names every relay's state."""
    states = []
    for sender in s.send.mailer.relays:
        state = sender.breaker.state
        # The gauge moves on sends; a quiet pod's cooldown ends by time alone, so refresh it here.
        s.metrics.set_circuit_state(sender.name, state)
        shown = f"open, retry in {sender.breaker.retry_after()}s" if state == OPEN else state
        states.append((sender.name, state, shown))
    detail = ", ".join(f"{name} {shown}" for name, _, shown in states)
    if all(state == OPEN for _, state, _ in states):
        return {"ok": False, "detail": f"open after repeated SMTP connection failures: {detail}"}
    return {"ok": True, "detail": detail}


def _shutdown_check() -> dict:
    if current_app.extensions.get(_DRAINING):
        return {"ok": False, "detail": "draining after SIGTERM"}
    return {"ok": True, "detail": "serving"}
