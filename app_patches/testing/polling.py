"""Waiting for a worker that runs beside the test (a thread or a process): a deadline, not a
speed target, so a slow shared machine makes a test slower, never red."""
from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll until ``condition`` is true; AssertionError if it still is not after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")
