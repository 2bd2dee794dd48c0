"""`lazy("torch")`: a stand-in for a module that imports it on first attribute use.

The app's first page needs gradio and the workspace, not torch, transformers, PEFT,
bitsandbytes and TRL (~8 s of imports on a 2-core CPU). Core modules that the app's
tabs import at start (models, run, chat, estimate, teach) reach those libraries
through this, so they load when the first model, estimate or run needs them.

In the app, those first imports would then happen in Gradio's handler threads, several
at once (the page's load events run together), and transformers is not safe to import
from two threads at the same time (seen as "cannot import name 'AutoConfig' from
'transformers'"). So the app calls `warm_up()` once it is listening: one background
thread imports the stack, and until it is done an import of any of HEAVY in another
thread waits for it (the warm-up thread never imports tunelab or gradio modules, so a
waiting thread cannot hold a lock it needs).
"""

from __future__ import annotations

import builtins
import importlib
import sys
import threading

HEAVY = frozenset({"torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"})
WARM = ("torch", "transformers", "transformers.models.auto", "peft")
_ready = threading.Event()
_begin = threading.Event()   # set: the warm-up stops waiting out its delay
_ready.set()                      # no warm-up running: nothing to wait for
_warm_thread: threading.Thread | None = None
_original_import = builtins.__import__


def _gated_import(name, globals=None, locals=None, fromlist=(), level=0):
    if (not _ready.is_set() and level == 0 and name.partition(".")[0] in HEAVY
            and threading.current_thread() is not _warm_thread):
        _begin.set()
        _ready.wait()
    return _original_import(name, globals, locals, fromlist, level)


def warm_up(modules: tuple[str, ...] = WARM, then=None, delay: float = 0.0) -> threading.Thread:
    """Import `modules` in a background thread, then call `then()` there (if given);
    other threads' imports of HEAVY libraries wait until both are done. The thread starts
    importing after `delay` seconds, or at once when another thread needs a HEAVY library
    (so a page can load before the imports take a core and the GIL). Returns the thread."""
    global _warm_thread

    def run():
        _begin.wait(delay)   # the delay, cut short when a thread needs the libraries
        try:
            for name in modules:
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001 — whoever needs it later gets the real error
                    pass
            if then is not None:
                then()
        finally:
            _ready.set()

    _ready.clear()
    _begin.clear()
    builtins.__import__ = _gated_import
    _warm_thread = threading.Thread(target=run, daemon=True, name="tunelab-warm-up")
    _warm_thread.start()
    return _warm_thread


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        module = sys.modules.get(self._name)
        if module is None or not _ready.is_set():
            __import__(self._name)   # through builtins.__import__: waits for a running warm-up
            module = sys.modules[self._name]
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> LazyModule:
    return LazyModule(name)
