"""API-key check for the protected blueprints (X-API-Key, constant time, several keys)."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, request

from ..outcomes import Outcome, Result
from .responses import render_result
from .services import services

log = logging.getLogger("herald_smtp.auth")

bp = Blueprint("auth", __name__)

# Blueprints whose routes need a key; health checks stay open for probes.
PROTECTED_BLUEPRINTS = {"send"}


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    given_bytes = given.encode("utf-8")
    # Compare against every key so the time taken does not say which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.encode("utf-8"))
    return matched


@bp.before_app_request
def require_api_key():
    if request.blueprint not in PROTECTED_BLUEPRINTS:
        return None
    keys = services().settings.api_keys
    if not keys or key_matches(request.headers.get("X-API-Key", ""), keys):
        return None
    log.warning("send unauthorized: invalid or missing API key", extra={"client_ip": request.remote_addr,
                                                                     "error_code": "unauthorized"})
    return render_result(Result(Outcome.UNAUTHORIZED, "invalid or missing API key"))
