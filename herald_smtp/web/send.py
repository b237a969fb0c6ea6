"""POST /v1/send: parse the body into a SendRequest, hand it to the use case, render its Answer.

A body that cannot be sent raises InvalidRequest, which responses.py handles.
"""

from __future__ import annotations

from flask import Blueprint, request

from ..sending.request import parse_send_request
from .responses import render
from .services import services

bp = Blueprint("send", __name__)


# No automatic OPTIONS: it would answer an empty 200 instead of a JSON 405.
@bp.post("/v1/send", provide_automatic_options=False)
def send():
    send_request = parse_send_request(request.get_data(), request.headers.get("Idempotency-Key"))
    return render(services().send.handle(send_request))
