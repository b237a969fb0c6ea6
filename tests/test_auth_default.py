"""The API key is required by default: every route but the open health endpoints needs it.

A new endpoint must not ship unauthenticated because nobody added it to a list:
web/auth.py names the open blueprints (health: /healthz, /readyz, /metrics), not
the protected ones.
"""

from __future__ import annotations

import pytest
from flask import Blueprint, jsonify

from herald_smtp.web.app import create_app
from herald_smtp.web.auth import OPEN_BLUEPRINTS
from tests.support.client import API_KEY, assert_error, with_changes


def app_with_new_endpoints(settings):
    """The real app, plus a test-only blueprint and a test-only route outside any blueprint."""
    app = create_app(with_changes(settings, api_keys=(API_KEY,)))
    reports = Blueprint("reports", __name__)
    reports.add_url_rule("/v1/reports", "reports", lambda: jsonify(reports="all of them"))
    app.register_blueprint(reports)
    app.add_url_rule("/v1/bare", "bare", lambda: jsonify(bare=True))
    return app


@pytest.mark.parametrize("path", ["/v1/reports", "/v1/bare"])
def test_a_new_endpoint_needs_the_key_without_being_listed_anywhere(settings, path):
    client = app_with_new_endpoints(settings).test_client()
    for headers in ({}, {"X-API-Key": "wrong"}):
        assert_error(client.get(path, headers=headers), 401, "unauthorized", "invalid or missing API key")
    assert client.get(path, headers={"X-API-Key": API_KEY}).status_code == 200


@pytest.mark.parametrize("path, status", [("/healthz", 200), ("/readyz", 200), ("/metrics", 200)])
def test_the_health_endpoints_still_answer_without_the_key(settings, path, status):
    client = app_with_new_endpoints(settings).test_client()
    assert client.get(path).status_code == status


def test_only_the_health_blueprint_is_open():
    assert OPEN_BLUEPRINTS == {"health"}  # widening it is a security decision, made here on purpose


def test_a_path_no_route_matches_is_still_a_404_or_405_without_the_key(settings):
    # No view runs for it, so there is nothing to protect; the answer stays the routing error (as before).
    client = app_with_new_endpoints(settings).test_client()
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.post("/healthz"), 405, "method_not_allowed")
    assert_error(client.get("/v1/send"), 405, "method_not_allowed")
