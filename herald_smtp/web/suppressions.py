"""GET and DELETE /v1/suppressions/{address}: how support sees and lifts a suppression (sending/suppression.py).

GET: 200 with the entry, 404 when the address is not suppressed. DELETE: 204 when lifted, 404 when there was
nothing to lift. The address is looked up by its HMAC: the store never holds it in clear. Protected by the API
key like every blueprint but health (auth.py).
"""

from __future__ import annotations

import logging
from typing import Callable

from flask import Blueprint

from ..addresses import InvalidAddress, mask_email, parse_address
from ..idempotency.base import StoreUnavailable
from ..outcomes import Answer, Outcome, Result
from ..sending.suppression import key_for
from .responses import render, render_result
from .services import services

log = logging.getLogger("herald_smtp.app")

bp = Blueprint("suppressions", __name__)

_PATH = "/v1/suppressions/<path:address>"


@bp.get(_PATH, provide_automatic_options=False)
def show(address: str):
    return _on_entry(address, _show)


@bp.delete(_PATH, provide_automatic_options=False)
def remove(address: str):
    return _on_entry(address, _remove)


def _show(address: str, key: str):
    entry = services().store.get_suppression(key)
    if entry is None:
        return render_result(_not_suppressed(address))
    return render(Answer(200, entry))


def _remove(address: str, key: str):
    if not services().store.unsuppress(key):
        return render_result(_not_suppressed(address))
    services().metrics.suppressions.labels("lifted").inc()
    log.warning("suppression lifted", extra={"to": mask_email(address)})
    response = render(Answer(204, {}))
    response.set_data(b"")
    return response


def _on_entry(address: str, action: Callable):
    """`action(address, key)` on the address's entry; a bad address is a 400, a store failure a 503."""
    key = _key(address)
    if isinstance(key, Result):
        return render_result(key)
    try:
        return action(address, key)
    except StoreUnavailable as exc:
        return _store_down(exc)


def _key(address: str) -> str | Result:
    try:
        mailbox = parse_address(address, international=True)  # as the send reads `to`
    except InvalidAddress:
        return Result(Outcome.INVALID_DESTINATION, "not a valid email address")
    return key_for(mailbox, services().settings.idempotency_secret)


def _not_suppressed(address: str) -> Result:
    return Result(Outcome.NOT_FOUND, f"{mask_email(address)} is not suppressed")


def _store_down(exc: StoreUnavailable):
    services().metrics.store_errors.labels("suppression").inc()
    log.error("suppression list: store unavailable", extra={"cause": str(exc)})
    return render_result(Result(Outcome.STORE_UNAVAILABLE, "the store that keeps the suppression list is "
                                                           "unavailable; retry later"))
