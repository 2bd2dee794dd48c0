"""Importing the heavy libraries ahead of time, where a process has time to spare before it
needs them (the app after it listens, a standby before it is handed a run)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable


def import_ahead(names: Iterable[str], stopped: Callable[[], bool] = lambda: False,
                 before_each: Callable[[], None] | None = None) -> bool:
    """Import each module of `names` in turn until `stopped()`; False if it stopped early.
    A module that fails to import is passed over: whoever uses it later gets the real error."""
    for name in names:
        if stopped():
            return False
        if before_each is not None:
            before_each()
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            pass
    return True
