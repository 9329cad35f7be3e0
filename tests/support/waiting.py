"""Waiting for something another thread or process does, with a deadline."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 60.0, what: str = "a condition"):
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
