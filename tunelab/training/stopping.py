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

The app's end is a stop too. A run process has a session of its own (so that the app's
Ctrl-C does not hit it), so nothing ends it when the app dies; the app passes its pid in
TUNELAB_APP_PID and `watch_app` (started right after `catch()`) looks every POLL_S s
whether the app is still there. When it is not, it stops the run as a Stop would (a
SIGTERM to itself): before training the run ends at once, from the first step on it
stops at the next step boundary with a checkpoint. Either way it is recorded as
"interrupted", naming the cause, not "cancelled" or "stopped" (nobody pressed Stop), and
a run with a checkpoint can be resumed. A standby with no run to do yet has nothing to
save and exits at once (service/standby.py). Not prctl's PR_SET_PDEATHSIG: it fires when
the *thread* that forked ends, and the app forks from short-lived Gradio worker threads.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

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


def record_unstarted(status, events, step: int = 0, by_app: bool = False) -> str:
    """Mark a run stopped before training: "cancelled", with a note that says so (in
    status.json and a `finish` event), or, `by_app` (the stop was the app's end, see
    `stopped_by_app`), "interrupted" with that cause. Returns the note or the error."""
    if by_app:
        return record_app_ended(status, events, step, trained=False)
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
        return record_unstarted(status, events, status.state.get("step") or 0, by_app=stopped_by_app(run_dir))
    finally:
        events.close()


# --------------------------------------------------------------------------- the app's end

APP_PID_ENV = "TUNELAB_APP_PID"   # set by the app (service/processes.py) in the children it starts
POLL_S = 0.5
_app_gone = threading.Event()
_watcher: threading.Thread | None = None


def app_pid() -> int | None:
    """The pid of the app that started this process; None for a run started from a terminal."""
    try:
        pid = int(os.environ.get(APP_PID_ENV, ""))
    except ValueError:
        return None
    return pid if pid > 1 else None


def watch_app(on_gone: Callable[[], None] | None = None) -> bool:
    """In a process the app started: a daemon thread that looks every POLL_S s whether the
    app is still there and, once it is not, sets `app_gone()` and calls `on_gone` (default:
    `stop_for_app`). It runs while the main thread imports. False when there is no app to
    watch (no TUNELAB_APP_PID). Started once a process."""
    global _watcher
    pid = app_pid()
    if pid is None:
        return False
    if _watcher is None:
        _watcher = threading.Thread(target=_watch, args=(pid, on_gone or stop_for_app), daemon=True,
                                    name="tunelab-watch-app")
        _watcher.start()
    return True


def _watch(pid: int, on_gone: Callable[[], None]) -> None:
    gone = _gone_check(pid)
    while not gone():
        time.sleep(POLL_S)
    _app_gone.set()
    on_gone()


def _gone_check(pid: int) -> Callable[[], bool]:
    """How to tell that the app `pid` ended. Its child: the kernel gives an orphan a new
    parent, which getppid() shows at once (and a recycled pid cannot fool). Otherwise (a
    process the child started, that inherited the variable): the pid is gone, a zombie,
    or a newer process's."""
    if os.getppid() == pid:
        return lambda: os.getppid() != pid
    import psutil
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return lambda: True

    def gone() -> bool:
        try:
            proc = psutil.Process(pid)
            return proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - started) > 1.0
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
    return gone


def stop_for_app() -> None:
    """The app ended: stop this run as its Stop would (the SIGTERM that `catch()` and
    `RunSignals` handle); `app_gone()` makes the end "interrupted", not "cancelled"."""
    os.kill(os.getpid(), signal.SIGTERM)


def app_gone() -> bool:
    """Whether the app that started this process has ended (see `watch_app`)."""
    return _app_gone.is_set()


def stopped_by_app(run_dir: Path) -> bool:
    """Whether the run in `run_dir` stops because its app ended, not because someone asked
    (the app's Stop writes STOP_FILE before it signals: a run stopped by both is "stopped")."""
    return app_gone() and not (Path(run_dir) / STOP_FILE).exists()


def app_ended_error(run_id: str, step: int, trained: bool) -> str:
    """Why a run whose app ended is "interrupted", and what to do next."""
    resume = f"resume it from the Runs tab or `python -m tunelab resume {run_id}`"
    if trained:
        return f"the app that started it ended at step {step}; {resume}"
    if step:
        return f"the app that started it ended before training resumed; the run is as it was at step {step}: {resume}"
    return "the app that started it ended before training began; nothing was trained: start it again"


def record_app_ended(status, events, step: int, trained: bool, summary: dict | None = None) -> str:
    """Mark the run "interrupted" by the app's end (status.json and a `finish` event);
    returns the error it records."""
    error = app_ended_error(status.state.get("run_id") or "RUN", step, trained)
    fields = {"summary": summary} if summary is not None else {}
    status.update(status="interrupted", error=error, note=None, step=step, finished=time.time(), **fields)
    events.emit("finish", status="interrupted", step=step, error=error, summary=summary)
    return error
