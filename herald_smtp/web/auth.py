"""API-key check (X-API-Key, constant time, several keys), on every route but the open ones.

The rule is "protected unless listed as open", so that a new endpoint cannot ship
without authentication because nobody added it to a list:

- every route needs a key when API_KEY is set: the routes of every blueprint,
  and routes registered on the app itself;
- OPEN_BLUEPRINTS are the exception: `health` (/healthz, /readyz, /metrics), for
  the kubelet's probes and Prometheus's scrape, which send no key;
- a request that matches no route (404, 405) gets its routing error without a
  key check: no view runs for it, and its answer says only that the path or the
  method does not exist (docs/API.md lists the paths anyway).

The check runs before the body is read: an unauthenticated client cannot make
the service parse bodies.
"""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, request

from ..outcomes import Outcome, Result
from .responses import render_result
from .services import services

log = logging.getLogger("herald_smtp.auth")

bp = Blueprint("auth", __name__)

# The only blueprints whose routes need no key: probes and scrapers send none. Adding one here is a security decision.
OPEN_BLUEPRINTS = frozenset({"health"})


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    given_bytes = given.encode("utf-8")
    # Compare against every key so the time taken does not say which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.encode("utf-8"))
    return matched


def needs_key() -> bool:
    """True unless the request matched no route or a route of an open blueprint."""
    if request.url_rule is None:  # a routing error (404/405) is answered; no view runs
        return False
    return request.blueprint not in OPEN_BLUEPRINTS


@bp.before_app_request
def require_api_key():
    if not needs_key():
        return None
    keys = services().settings.api_keys
    if not keys or key_matches(request.headers.get("X-API-Key", ""), keys):
        return None
    # The message is the one operators grep for since the first version, whatever the endpoint; `path` says which.
    log.warning("send unauthorized: invalid or missing API key", extra={"client_ip": request.remote_addr,
                                                                     "path": request.path,
                                                                     "error_code": "unauthorized"})
    return render_result(Result(Outcome.UNAUTHORIZED, "invalid or missing API key"))
