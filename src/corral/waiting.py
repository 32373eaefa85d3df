"""Waiting on conditions, never on fixed sleeps: poll a predicate until it holds or a
deadline passes. Clock and sleep are injectable so that tests can script them.

Must never import anything else of corral but errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from corral.errors import WaitTimeout

T = TypeVar("T")


__all__ = ["WaitTimeout", "wait_for"]  # WaitTimeout lives in errors.py, with its siblings


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `probe` until it returns something other than None/False and return that.

    :raise WaitTimeout: `timeout` seconds passed first; the message says `what` was awaited.
    """
    deadline = clock() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if clock() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        sleep(interval)
