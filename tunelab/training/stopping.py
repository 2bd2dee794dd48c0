"""What a Stop (the app's Stop, `tunelab stop`, SIGTERM, Ctrl-C) does at each moment of a run.

    starting, loading   imports, config, data, model, trainer   the run ends as "cancelled"
    training            from the first step on                  the current step ends, a
                                                                checkpoint is saved, "stopped"

A signal handler here only sets a flag (`StopFlag`): nothing is raised into whatever the
process was doing (an import, a native call). Who reads the flag:

- training: the trainer's callback, at each step's end (callback.py), which then saves;
- loading: run.py, between its phases (before the model loads, before the trainer is
  built, as training begins), which records the run "cancelled" and returns. A run from
  the app is not left to get there: its status says `phase` ("loading" until training
  begins, then "training"), and the app's Stop ends a run that is not yet training at once
  (service/processes.py: SIGKILL to its process group) and records it "cancelled" itself.
  Nothing was trained, so nothing is lost.

The app's Stop touches STOP_FILE in the run folder before it reads `phase`, and the run
sets `phase` to "training" before it looks at STOP_FILE and its flag one last time, so a
Stop that lands as training begins is never missed: either the app sees "loading" and ends
the process, or the run sees the file and stops at once, or both (then both say "cancelled").

The app's end is a stop too. A run process has a session of its own (so that the app's
Ctrl-C does not hit it), so nothing ends it when the app dies; the app passes its pid in
TUNELAB_APP_PID and `watch_app` (started right after `catch()`) looks every POLL_S s
whether the app is still there. When it is not, it stops the run as a Stop would (a
SIGTERM to itself, which sets the flag): before training the run ends at the next phase
boundary, from the first step on it stops at the next step boundary with a checkpoint.
Either way it is recorded as "interrupted", naming the cause, not "cancelled" or
"stopped" (nobody pressed Stop), and a run with a checkpoint can be resumed. A standby
with no run to do yet has nothing to save and exits at once (service/standby.py). Not
prctl's PR_SET_PDEATHSIG: it fires when the *thread* that forked ends, and the app forks
from short-lived Gradio worker threads.
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
LOADING, TRAINING = "loading", "training"   # a run's `phase` in status.json, written by the run itself


class StopRequested(Exception):
    """Raised by run.py's own code at a phase boundary when a stop came while it loaded
    (never from a signal handler): the run is recorded "cancelled" where it is caught."""


class StopFlag:
    """Whether this process (or one run in it) was asked to stop. Set by `handle` (the
    SIGTERM and SIGINT handler, which does nothing else), by the callback when it sees
    STOP_FILE, or by code; read where stopping is safe."""

    def __init__(self):
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str = "stop") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def handle(self, signum, frame) -> None:
        """The signal handler. A second Ctrl-C, once a stop is already on its way, ends
        the process at once (exit 130), as a terminal user who presses it twice expects."""
        if signum == signal.SIGINT and self.is_set():
            os._exit(130)
        self.set(signal.Signals(signum).name)

    def check(self, run_dir: Path | None = None) -> None:
        """At a boundary while a run loads: raise StopRequested when a stop came (the flag,
        or STOP_FILE in `run_dir`)."""
        if self.is_set() or (run_dir is not None and (Path(run_dir) / STOP_FILE).exists()):
            self.set("STOP file")
            raise StopRequested(self.reason)


_process_flag = StopFlag()   # set by a signal caught since `catch()`: before any run began


def catch() -> None:
    """From now on SIGTERM and SIGINT set this process's flag, nothing more (call it first
    thing in a run process: the CLI's `__main__`, a standby). A run begun later starts
    with the flag set, and so ends as "cancelled" at its first boundary."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _process_flag.handle)


def requested() -> bool:
    """Whether a SIGTERM or SIGINT was caught (by `catch()`) in this process."""
    return _process_flag.is_set()


class RunSignals:
    """`with RunSignals() as flag:` around one run: SIGTERM and SIGINT set `flag` (a fresh
    StopFlag a run, carrying a stop `catch()` caught before it), which run.py reads between
    its loading phases and the trainer's callback at each step's end. The handlers before
    are put back afterwards. Outside the main thread (a notebook's worker) no handler is
    installed: the STOP file still stops the run."""

    def __enter__(self) -> StopFlag:
        self.flag = StopFlag()
        if _process_flag.is_set():
            self.flag.set(_process_flag.reason or "stop")
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self.flag.handle)
        return self.flag

    def __exit__(self, *exc):
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
    """A stop that came before the run began training, recorded from outside the run's own
    code: by the CLI, when its process caught a stop before the run started, and by the app,
    once it has ended a run process that was still loading (service/processes.py). Nothing
    is recorded when the run already ended on its own. Returns the note, or None when
    nothing was recorded."""
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
    """The app ended: stop this run as its Stop would (a SIGTERM to itself, whose handler,
    `catch()`'s or `RunSignals`', sets the flag); `app_gone()` makes the end "interrupted",
    not "cancelled"."""
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
