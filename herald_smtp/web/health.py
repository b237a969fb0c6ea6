"""Operational endpoints: /healthz (liveness), /readyz (readiness), /metrics (Prometheus)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..config import SERVICE_NAME
from ..idempotency.base import StoreUnavailable
from .services import services

bp = Blueprint("health", __name__)


# provide_automatic_options=False: OPTIONS gets the JSON 405, not an empty 200.
@bp.get("/healthz", provide_automatic_options=False)
def healthz():
    # Checks nothing external, by design: a Redis or SMTP outage must not restart pods.
    return jsonify(status="healthy", service=SERVICE_NAME)


@bp.get("/readyz", provide_automatic_options=False)
def readyz():
    """Ready when the store answers, SMTP is configured and the circuit is not open.

    No SMTP connection is opened here: the breaker's state already says whether
    the server has been reachable, without a probe per kubelet tick.
    """
    s = services()
    checks = {"store": _store_check(s), "smtp": _smtp_check(s.settings), "circuit": _circuit_check(s)}
    ready = all(check["ok"] for check in checks.values())
    response = jsonify(status="ready" if ready else "not_ready", service=SERVICE_NAME, checks=checks)
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics", provide_automatic_options=False)
def metrics():
    body, content_type = services().metrics.exposition()
    return Response(body, content_type=content_type)


def _store_check(s) -> dict:
    try:
        s.store.ping()
    except StoreUnavailable as exc:
        s.metrics.store_errors.labels("ping").inc()
        return {"ok": False, "detail": str(exc)}
    return {"ok": True, "detail": f"{s.store.name} store answers"}


def _smtp_check(settings) -> dict:
    if not settings.smtp_configured:
        return {"ok": False, "detail": "SMTP not configured (SMTP_HOST and SMTP_FROM are required)"}
    mode = "implicit TLS" if settings.smtp_use_tls else "STARTTLS" if settings.smtp_use_starttls else "plain"
    return {"ok": True, "detail": f"{settings.smtp_host}:{settings.smtp_port} ({mode})"}


def _circuit_check(s) -> dict:
    state = s.send.mailer.breaker.state
    # The gauge moves on sends; a quiet pod's cooldown ends by time alone, so refresh it here.
    s.metrics.set_circuit_state(state)
    if state == "open":
        return {"ok": False, "detail": f"open after repeated SMTP connection failures; retry in "
                                       f"{s.send.mailer.breaker.retry_after()}s"}
    return {"ok": True, "detail": state}
