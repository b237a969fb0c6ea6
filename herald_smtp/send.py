"""POST /v1/send: parse the body into a SendRequest, call the service, render the Answer."""

from __future__ import annotations

from flask import Blueprint, request

from .context import services
from .outcomes import Result
from .payload import InvalidRequest, parse_send_request
from .responses import render, render_result
from .service import log_result

bp = Blueprint("send", __name__)


# No automatic OPTIONS: it would answer an empty 200 instead of a JSON 405.
@bp.post("/v1/send", provide_automatic_options=False)
def send():
    try:
        send_request = parse_send_request(request.get_data(), request.headers.get("Idempotency-Key"))
    except InvalidRequest as exc:
        result = Result(exc.outcome, exc.message)
        log_result(result, exc.to, 0.0)
        return render_result(result)
    return render(services().send.handle(send_request))

