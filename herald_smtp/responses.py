"""Answers and Results as Flask JSON responses, with their headers."""

from __future__ import annotations

from flask import g, jsonify

from .outcomes import Answer, Result, answer_for


def render(answer: Answer):
    g.error_code = answer.body.get("error_code", "")  # for the requests metric
    response = jsonify(answer.body)
    response.status_code = answer.status
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if answer.retry_after is not None:
        response.headers["Retry-After"] = str(answer.retry_after)
    return response


def render_result(result: Result):
    return render(answer_for(result))
