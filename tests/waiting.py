"""Waiting for an event in a test: a status, a file, a process's end.

A test waits for the thing itself, never for a time window. The ceiling only guards
against a hang, so it is far longer than anything it waits for takes, even on a busy
2-core machine: a slow machine makes a test slower, never red."""

from __future__ import annotations

import time

CEILING_S = 600.0


def wait_for(check, what: str, ceiling: float = CEILING_S, every: float = 0.1):
    """Poll `check()` until it returns something truthy, and return that; fail naming
    `what` once `ceiling` seconds have passed without it."""
    t0 = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() - t0 > ceiling:
            raise AssertionError(f"{what}: not seen in {ceiling:.0f} s (a hang guard, not a time target)")
        time.sleep(every)
