"""What a Stop (SIGTERM from the app, `kill`, Ctrl-C) does at each moment of a run process.

    starting   imports, config, data           the run ends at once as "cancelled"
    loading    model, tokenizer, trainer        the same: nothing trained, nothing to save
    training   from the first step on           the current step ends, a checkpoint is saved, "stopped"

Python's default for SIGTERM is to die on the spot. A run process spends its first
seconds importing torch and loading the model, so a Stop pressed right after Start
killed it mid-import: no status of its own, and the app could only guess ("interrupted
... did not stop within the grace period", issue #15). So a run process catches SIGTERM
from its first moment (`catch()`: the CLI's `__main__`, a standby) and remembers it;
code that can end the run cleanly `arm()`s it, and then the signal raises
`StopRequested` there (at once if one came already). `RunSignals` does the same for the
span of a run, until training begins; from then on a signal only asks for the graceful
stop at the next step boundary (see run.py's callback).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

STOP_FILE = "STOP"   # in a run folder: stop at the next step (for a run that cannot get our signal)
CANCELLED_NOTE = "Stopped before the first training step; nothing was trained"


class StopRequested(BaseException):
    """A stop before training began. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way (a library's, or a standby's import loop) swallows it."""


_requested = threading.Event()
_armed = False


def _on_signal(signum, frame):
    global _armed
    _requested.set()
    if _armed:
        _armed = False   # raised once: the code that handles it is not interrupted again
        _stop_now(signal.Signals(signum).name, frame)


_pending: str | None = None   # a stop that came mid-import, raised once the import is done
RETRY_S = 0.05


def _in_import(frame) -> bool:
    """Whether the interrupted code runs inside an import (importlib's frames on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _stop_now(name: str, frame) -> None:
    """Raise StopRequested(name) in the interrupted code, unless it is importing a module:
    then as soon as the import is done (looked at again every RETRY_S by SIGALRM). A stop
    raised halfway through an import left the module half made: transformers' next lazy
    import of it failed ("Could not import module ..."), so the run ended "failed" rather
    than "cancelled", and a native library (torch) interrupted that way crashed the
    process with SIGSEGV as it exited."""
    global _pending
    if _in_import(frame):
        _pending = name
        signal.signal(signal.SIGALRM, _retry)
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    _pending = None
    raise StopRequested(name)


def _retry(signum, frame):
    if _pending is not None:
        _stop_now(_pending, frame)


def _drop_pending() -> None:
    """No stop is to be raised any more (the code that could handle one is done)."""
    global _pending
    if _pending is not None:
        _pending = None
        signal.setitimer(signal.ITIMER_REAL, 0)


def catch() -> None:
    """From now on SIGTERM is remembered, not fatal (call it first thing in a run process).
    The app starts its children with SIGTERM blocked (processes._hold_sigterm): one sent before
    this point waits, and arrives here."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def arm() -> None:
    """From now on a caught SIGTERM raises StopRequested here; at once if one came already."""
    global _armed
    _armed = True
    if _requested.is_set():
        _armed = False
        raise StopRequested("SIGTERM")


def disarm() -> None:
    global _armed
    _armed = False
    _drop_pending()


def requested() -> bool:
    """Whether a SIGTERM was caught (by `catch()`) in this process."""
    return _requested.is_set()


class RunSignals:
    """`with RunSignals(flag) as signals:` around one run. SIGTERM or SIGINT raises
    StopRequested while the run loads; after `signals.training(run_dir)` they set `flag`,
    which the trainer's callback reads at the next step boundary. A second SIGINT aborts."""

    def __init__(self, flag: threading.Event):
        self.flag = flag
        self.loading = True
        self.old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag.set()
        if self.loading:
            self.loading = False   # once, as in _on_signal
            _stop_now(signal.Signals(signum).name, frame)

    def training(self, run_dir: Path) -> bool:
        """Training starts now: from here a stop is graceful. True when a stop came while
        it loaded without raising (a run outside the main thread; the STOP file)."""
        self.loading = False
        _drop_pending()   # a stop that came mid-import is the graceful one now: the flag is set
        return self.flag.is_set() or (Path(run_dir) / STOP_FILE).exists()

    def __exit__(self, *exc):
        _drop_pending()
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def cancelled_note(step: int) -> str:
    """What a run stopped before training says: nothing trained (a resumed run: as it was)."""
    if step:
        return f"Stopped before training resumed; the run is as it was at step {step}"
    return CANCELLED_NOTE


def record_cancelled(status, events, step: int = 0) -> str:
    """Mark a run stopped before training as "cancelled", with a note that says so (in
    status.json and a `finish` event); returns the note."""
    note = cancelled_note(step)
    status.update(status="cancelled", note=note, error=None, step=step, finished=time.time())
    events.emit("finish", status="cancelled", step=step, note=note, summary=None)
    return note


def cancel_unstarted(run_dir: Path | None) -> str | None:
    """A stop that came before the run began (its process was still importing or reading
    its config): record it in the run folder the app made for it, unless the run already
    ended on its own (a SIGTERM in the moment after it finished). Returns the note, or
    None when nothing was recorded."""
    from .events import EventWriter
    from .runfolder import Status
    if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
        return None
    status = Status(run_dir)
    if status.state.get("status") not in (None, "starting", "running"):
        return None
    events = EventWriter(run_dir)
    try:
        return record_cancelled(status, events, status.state.get("step") or 0)
    finally:
        events.close()
