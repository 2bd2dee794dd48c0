"""The app's child processes: starting them, waiting for them, signalling them, and the
standby process kept ready for the next run.

    proc = spawn(run_dir, cmd)   # a run's process (a waiting standby, or a cold start)
    reap()                       # the run ids still running here; ended ones recorded

`_procs` holds the live run processes, by run id. Every child (run or standby) has a
thread that waits for it, so an ended process is reaped at once and its end recorded
(a death by signal in its status.json), whether or not a page is following it (no
`<defunct>` children left behind). Every child also watches the app: when the app dies,
a standby exits and a run stops at its next step as "interrupted" (training/stopping.py's
watch_app; TUNELAB_APP_PID in `_child_env`). Kept apart from jobs.py, which decides what runs when
(the checks, the queue, Stop): this module knows processes and run folders only, and
never imports jobs (jobs.py sets `queue_busy`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from . import standby
from ..common import workspace
from ..training.runfolder import Status
from ..training.stopping import APP_PID_ENV, STOP_FILE, cancelled_note

LOG_FILE = "train.log"
_procs: dict[str, subprocess.Popen] = {}
log_ = logging.getLogger(__name__)
_lock = threading.Lock()

# Whether runs wait in the queue (its thread is alive): then no standby is started, as the
# next run takes the slot. jobs.py sets it; it is a hook so that this module needs no jobs.
queue_busy: Callable[[], bool] = lambda: False


def _child_env() -> dict:
    env = os.environ.copy()
    env["TUNELAB_HOME"] = str(workspace.home())
    # Each child watches this pid and ends with the app (a run as "interrupted", resumable;
    # a standby at once): its own session keeps it from the app's Ctrl-C, and from its end.
    env[APP_PID_ENV] = str(os.getpid())
    return env


def spawn(run_dir: Path, cmd: list[str]) -> subprocess.Popen:
    """Start `cmd`, the process of the run in `run_dir` (handed to the waiting standby when
    one fits), its output appended to the run's train.log; it is in `_procs` on return."""
    env = _child_env()
    proc = _take_standby(cmd, env, run_dir / LOG_FILE)
    if proc is None:
        log = open(run_dir / LOG_FILE, "ab")
        # Its own session: Stop can signal the whole process group, and a Ctrl-C in the
        # app's terminal does not also hit the training.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_run_child_setup)
        log.close()
        _reap_when_done(proc)
    with _lock:
        _procs[run_dir.name] = proc
    return proc


def _hold_sigterm() -> None:
    """In a child, before exec: SIGTERM is held (blocked, so it waits) until the new process
    can catch it (stopping.catch unblocks it). A Stop in its first instant, while Python
    starts, is then handled like any other instead of killing it mid-import."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _run_child_setup() -> None:
    _hold_sigterm()
    standby.lower_priority()


def _reap_when_done(proc: subprocess.Popen) -> None:
    """A thread that waits for `proc` (a run, or a standby that may become one) and, once
    it ends, reaps it and records how its run ended. Before, only a page's 1 s tick polled
    the children, so with no page following, ended runs stayed zombies for minutes."""
    def wait():
        proc.wait()
        if _ended(proc):
            _keep_a_standby()
    threading.Thread(target=wait, daemon=True, name=f"tunelab-wait-{proc.pid}").start()


def _ended(proc: subprocess.Popen) -> bool:
    """Forget an ended run process and record a death by signal; False when it was not
    a run's (a standby that never got one) or another thread did it first."""
    with _lock:
        run_ids = [run_id for run_id, p in _procs.items() if p is proc]
        for run_id in run_ids:
            del _procs[run_id]
    for run_id in run_ids:
        if proc.returncode < 0:
            _record_signal_death(workspace.runs_dir() / run_id, signal.Signals(-proc.returncode).name)
    return bool(run_ids)


def reap() -> list[str]:
    """The run ids still running here; ended ones are recorded now if their waiting thread
    (see _reap_when_done) has not yet. With standbys on and nothing training or queued,
    make sure one is waiting. (Queued runs are started by the queue's own thread, which
    runs while the line is not empty.)"""
    with _lock:
        ended = [proc for proc in _procs.values() if proc.poll() is not None]
    for proc in ended:
        _ended(proc)
    return _keep_a_standby()


def _keep_a_standby() -> list[str]:
    with _lock:
        running = list(_procs)
    if _standby_wanted and not running and not queue_busy():   # nothing training or waiting to
        prepare_standby()
    return running


def _record_signal_death(run_dir: Path, signame: str) -> None:
    """A run process that a signal ended never wrote its own end: say what happened, so
    the Train and Runs tabs show the cause rather than a bare "interrupted"."""
    st = Status(run_dir)
    if st.state.get("status") not in ("running", "starting", "interrupted"):
        return  # it finished, stopped, was cancelled or failed on its own first
    step = st.state.get("step", 0)
    stopping = (run_dir / STOP_FILE).exists()
    if stopping and (signame == "SIGTERM" or not step):
        # Our Stop, before any step was trained: nothing trained, nothing saved. SIGTERM:
        # it came in the instant before the process could catch it (a run catches it from
        # its first import on, see training/stopping.py); SIGKILL: the grace period ran out first.
        note = cancelled_note(step) if signame == "SIGTERM" else \
            f"{cancelled_note(0)} (it was killed: it did not end within the grace period)"
        st.update(status="cancelled", note=note, error=None, finished=time.time())
        return
    if stopping:
        why = f"stopped by force ({signame}) at step {step}: it did not stop within the grace period"
    elif signame == "SIGKILL":
        why = (f"the training process was killed (SIGKILL) at step {step}. Unless someone killed it, "
               f"the system ran out of memory: try a smaller train.batch_size or train.max_length, "
               f"gradient checkpointing, or qlora")
    else:
        why = f"the training process was ended by {signame} at step {step}"
    st.update(status="interrupted", error=why, finished=time.time())


# --------------------------------------------------------------------------- standby process

_standby_wanted = False
_standby: dict | None = None   # {"proc", "env", "cwd", "python"} of the waiting process


def use_standby(on: bool = True) -> None:
    """Keep a standby training process ready (see tunelab/service/standby.py); the app turns
    this on. TUNELAB_STANDBY=0 overrides it."""
    global _standby_wanted
    _standby_wanted = bool(on) and standby.enabled()
    if _standby_wanted:
        prepare_standby()
    else:
        _drop_standby()


def prepare_standby() -> bool:
    """Start a standby unless one is waiting or a run started here is training (a
    standby's imports would take a core from it). Returns True when one is waiting."""
    global _standby
    with _lock:
        if _standby is not None and _standby["proc"].poll() is None:
            return True
        if any(p.poll() is None for p in _procs.values()):
            return False
        env = _child_env()
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.service.standby"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True, text=True, preexec_fn=_hold_sigterm)
        _reap_when_done(proc)   # also once it has become a run (then _procs names it)
        _standby = {"proc": proc, "env": env, "cwd": os.getcwd(), "python": sys.executable}
        return True


def _take_standby(cmd: list[str], env: dict, log: Path) -> subprocess.Popen | None:
    """Hand `cmd` to the waiting standby; None when there is none that fits (then the
    caller starts the run cold). A standby that does not fit is ended."""
    global _standby
    with _lock:
        sb, _standby = _standby, None
    if sb is None or sb["proc"].poll() is not None:
        return None
    differ = sorted(k for k in set(sb["env"]) | set(env)
                    if sb["env"].get(k) != env.get(k) and k not in standby.SET_BY_IMPORTS)
    if not differ and sb["cwd"] == os.getcwd() and cmd[0] == sb["python"] and cmd[1:3] == ["-m", "tunelab"]:
        try:
            sb["proc"].stdin.write(json.dumps({"argv": cmd[3:], "log": str(log), "env": env}) + "\n")
            sb["proc"].stdin.close()
            return sb["proc"]
        except (BrokenPipeError, OSError, ValueError):
            pass  # it died meanwhile
    else:
        log_.warning("standby not used (environment %s, folder or interpreter changed): starting cold",
                     ", ".join(differ) or "unchanged")
    _end(sb["proc"])
    return None


def _drop_standby() -> None:
    global _standby
    with _lock:
        sb, _standby = _standby, None
    if sb is not None:
        _end(sb["proc"])


def _end(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()   # end of input: a standby exits by itself
    except (OSError, ValueError):
        pass
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        proc.kill()          # still importing: not worth waiting for
        proc.wait()


# --------------------------------------------------------------------------- signals and logs

def _alive(run_dir: Path, pid: int) -> bool:
    with _lock:
        proc = _procs.get(run_dir.name)
    if proc is not None and proc.pid == pid:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _signal(pid: int, sig) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def log_tail(run_id: str, lines: int = 20) -> str:
    from ..training.runs import find_run
    path = find_run(run_id) / LOG_FILE
    if not path.exists():
        return ""
    text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
