"""Waiting for a condition in a test: the one polling loop, bounded, failing with what was awaited."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str = "condition", timeout: float = 15.0,
             logs: Callable[[], str] = lambda: "") -> T:
    """The first truthy value of predicate() within `timeout`; else AssertionError naming `what`, with logs()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{logs()}")
