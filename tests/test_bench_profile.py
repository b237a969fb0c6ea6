"""bench/profile.py's reading of py-spy's collapsed stacks: only a request's samples count, per function."""

from __future__ import annotations

from bench.profile import frame_name, top_inclusive, top_of_profile

_WORKER = 'process 1:"python -m herald_smtp.tools.cli serve";process 2:"python -m herald_smtp.tools.cli serve"'
_REQUEST = f"{_WORKER};ThreadWorker.handle_request (gunicorn/workers/gthread.py:771);send (herald_smtp/web/send.py:21)"
_STACKS = "\n".join([
    f"{_REQUEST};validate_email (email_validator/validate_email.py:10) 3",
    f"{_REQUEST};validate_email (email_validator/validate_email.py:12) 1",
    f"{_REQUEST};Logger.info (logging/__init__.py:1477);JSONEncoder.iterencode (json/encoder.py:200) 4",
    f"{_WORKER};ThreadWorker.run (gunicorn/workers/gthread.py:300) 8",  # no request: left out
    "garbage line",
])


def test_frames_add_up_per_function_not_per_line():
    assert frame_name("validate_email (email_validator/validate_email.py:10)") == \
        "validate_email (email_validator/validate_email.py)"


def test_self_and_total_shares_of_the_request_samples(tmp_path):
    collapsed = tmp_path / "profile.txt"
    collapsed.write_text(_STACKS + "\n")
    samples, rows = top_of_profile(collapsed, 2)
    assert samples == 8
    assert rows == [("validate_email (email_validator/validate_email.py)", 50.0, 50.0),
                    ("JSONEncoder.iterencode (json/encoder.py)", 50.0, 50.0)]
    assert top_inclusive(collapsed, ["(logging/", "(email_validator/", "(redis/"]) == {
        "(logging/": 50.0, "(email_validator/": 50.0, "(redis/": 0.0}
