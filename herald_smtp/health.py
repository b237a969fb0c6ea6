"""Liveness: GET /healthz. It checks nothing external, by design."""

from __future__ import annotations

from flask import Blueprint, jsonify

from .config import SERVICE_NAME

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="healthy", service=SERVICE_NAME)
