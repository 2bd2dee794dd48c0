"""Importing the heavy libraries: ahead of time, where a process has time to spare before it
needs them (the app after it listens, a standby before it is handed a run), and one thread at a
time, where a process has several (the app's event handlers).

transformers is not safe to import from two threads at once. Its package loads its modules
lazily, on the first use of a name, and two threads that start it together can leave one of
them with "cannot import name 'AutoTokenizer' from 'transformers'" (seen when a dataset was
uploaded while the app imported the stack behind the first page). So every first use of
transformers in TuneLab's own code goes through `one_at_a_time()` (modelio/loading.py, the
exports, the bundled model's conversion), and so does importing ahead."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable

# What a process that trains or chats needs first, in the order they import each other.
STACK = ("torch", "transformers", "transformers.models.auto", "peft")

_one_at_a_time = threading.RLock()
_imported: set[str] = set()   # imported through here: their first import has finished


def one_at_a_time() -> threading.RLock:
    """`with one_at_a_time():` around code that may be the first in this process to import a
    module of transformers (or a library that imports it): other threads' such code waits."""
    return _one_at_a_time


def import_serially(names: Iterable[str]) -> None:
    """Import each module of `names` unless this already did, one thread at a time; an import
    error is raised to the caller. Once done, a call costs a set lookup and takes no lock."""
    names = tuple(names)
    if _imported.issuperset(names):
        return
    with _one_at_a_time:
        for name in names:
            if name not in _imported:
                importlib.import_module(name)
                _imported.add(name)


def import_ahead(names: Iterable[str], stopped: Callable[[], bool] = lambda: False,
                 before_each: Callable[[], None] | None = None) -> bool:
    """Import each module of `names` in turn (one thread at a time, as `import_serially`)
    until `stopped()`; False if it stopped early. A module that fails to import is passed
    over: whoever uses it later gets the real error."""
    for name in names:
        if stopped():
            return False
        if before_each is not None:
            before_each()
        try:
            import_serially((name,))
        except Exception:  # noqa: BLE001
            pass
    return True
