"""POST /v1/send: parse the body into a SendRequest, call the service, render the Answer."""

from __future__ import annotations

from flask import Blueprint, request

from .context import services
from .outcomes import Result
from .payload import InvalidRequest, parse_send_request
from .responses import render, render_result
from .service import log_result

bp = Blueprint("send", __name__)


@bp.post("/v1/send")
def send():
    try:
        send_request = parse_send_request(request.get_data(), request.headers.get("Idempotency-Key"))
    except InvalidRequest as exc:
        result = Result(exc.outcome, exc.message)
        log_result(result, _raw_to(), 0.0)
        return render_result(result)
    return render(services().send.handle(send_request))


def _raw_to() -> str | None:
    # Best effort, for the log line only: the body failed validation.
    data = request.get_json(silent=True, force=True)
    to = data.get("to") if isinstance(data, dict) else None
    return to if isinstance(to, str) else None
