"""The app's child processes: starting them, waiting for them, ending them, and the
standby process kept ready for the next run. One `Children` object holds them; the app's
`Jobs` (jobs.py) owns it and decides what runs when.

    children = Children(on_run_end=...)
    proc = children.spawn(run_dir, cmd)   # a run's process (a waiting standby, or a cold start)
    children.reap()                       # the run ids still running here; ended ones recorded
    children.end_loading(run_dir, pid)    # a Stop before training: end the process, "cancelled"

Every child (run or standby) has a thread that waits for it, so an ended process is
reaped at once and its end recorded (a death by signal in its status.json), whether or
not a page is following it (no `<defunct>` children left behind); `on_run_end` is called
then, so the owner can start a standby. Every child also watches the app: when the app
dies, a standby exits and a run stops at its next step as "interrupted"
(training/stopping.py's watch_app; TUNELAB_APP_PID in `child_env`). This module knows
processes and run folders only.
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
from ..training.stopping import APP_PID_ENV, STOP_FILE, TRAINING, cancel_unstarted

LOG_FILE = "train.log"
log_ = logging.getLogger(__name__)


def child_env() -> dict:
    env = os.environ.copy()
    env["TUNELAB_HOME"] = str(workspace.home())
    # Each child watches this pid and ends with the app (a run as "interrupted", resumable;
    # a standby at once): its own session keeps it from the app's Ctrl-C, and from its end.
    env[APP_PID_ENV] = str(os.getpid())
    return env


def send_signal(pid: int, sig) -> None:
    """`sig` to the process group of `pid` (a run's own session: its workers too), else to `pid`."""
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def is_training(run_dir: Path) -> bool:
    """Whether the run in `run_dir` has begun its first step (its own `phase`, see
    training/stopping.py); before that, ending its process loses nothing."""
    return Status(run_dir).state.get("phase") == TRAINING


class Children:
    """The run processes started here (by run id) and the waiting standby."""

    def __init__(self, on_run_end: Callable[[], None] | None = None):
        self._procs: dict[str, subprocess.Popen] = {}
        self._standby: dict | None = None   # {"proc", "env", "cwd", "python"} of the waiting process
        self._lock = threading.Lock()        # _procs and _standby
        self._recording = threading.Lock()   # one thread at a time records how a run ended
        self._on_run_end = on_run_end or (lambda: None)

    # ------------------------------------------------------------------ runs

    def spawn(self, run_dir: Path, cmd: list[str]) -> subprocess.Popen:
        """Start `cmd`, the process of the run in `run_dir` (handed to the waiting standby
        when one fits), its output appended to the run's train.log."""
        env = child_env()
        proc = self._take_standby(cmd, env, run_dir / LOG_FILE)
        if proc is None:
            log = open(run_dir / LOG_FILE, "ab")
            # Its own session: Stop can signal the whole process group, and a Ctrl-C in the
            # app's terminal does not also hit the training.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, preexec_fn=standby.lower_priority)
            log.close()
            self._reap_when_done(proc)
        with self._lock:
            self._procs[run_dir.name] = proc
        return proc

    def running(self) -> list[str]:
        """The run ids whose process started here is alive (ended ones are not recorded here)."""
        with self._lock:
            return [run_id for run_id, p in self._procs.items() if p.poll() is None]

    def reap(self) -> list[str]:
        """The run ids still running here; ended ones are recorded now if their waiting
        thread (see _reap_when_done) has not yet."""
        with self._lock:
            ended = [proc for proc in self._procs.values() if proc.poll() is not None]
        for proc in ended:
            self._ended(proc)
        with self._lock:
            return list(self._procs)

    def alive(self, run_dir: Path, pid: int) -> bool:
        with self._lock:
            proc = self._procs.get(run_dir.name)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False

    def wait_gone(self, run_dir: Path, pid: int, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the run's process to end; False when it still runs."""
        t0 = time.time()
        while self.alive(run_dir, pid):
            if time.time() - t0 >= timeout_s:
                return False
            time.sleep(0.1)
        return True

    def end_loading(self, run_dir: Path, pid: int) -> None:
        """A Stop before the run's first step: end its process now (SIGKILL to its process
        group; nothing was trained, so nothing is lost) and record it "cancelled" once it is
        gone. The caller touched STOP_FILE before it read the phase (stopping.py says why)."""
        send_signal(pid, signal.SIGKILL)
        if self.wait_gone(run_dir, pid, 30.0):
            self.reap()   # our child: recorded by its waiting thread or here
            with self._recording:
                cancel_unstarted(run_dir)   # a process started elsewhere (the CLI): recorded here

    def _reap_when_done(self, proc: subprocess.Popen) -> None:
        """A thread that waits for `proc` (a run, or a standby that may become one) and, once
        it ends, reaps it and records how its run ended. Before, only a page's 1 s tick polled
        the children, so with no page following, ended runs stayed zombies for minutes."""
        def wait():
            proc.wait()
            if self._ended(proc):
                self._on_run_end()
        threading.Thread(target=wait, daemon=True, name=f"tunelab-wait-{proc.pid}").start()

    def _ended(self, proc: subprocess.Popen) -> bool:
        """Forget an ended run process and record a death by signal; False when it was not
        a run's (a standby that never got one) or another thread did it first."""
        with self._recording:
            with self._lock:
                run_ids = [run_id for run_id, p in self._procs.items() if p is proc]
                for run_id in run_ids:
                    del self._procs[run_id]
            for run_id in run_ids:
                if proc.returncode < 0:
                    _record_signal_death(workspace.runs_dir() / run_id, signal.Signals(-proc.returncode).name)
        return bool(run_ids)

    # ------------------------------------------------------------------ the standby

    @property
    def standby(self) -> subprocess.Popen | None:
        """The waiting standby process, if there is one."""
        with self._lock:
            return self._standby["proc"] if self._standby is not None else None

    @property
    def standby_env(self) -> dict | None:
        """The environment the waiting standby was started with (a run only takes it when
        its own matches)."""
        with self._lock:
            return dict(self._standby["env"]) if self._standby is not None else None

    def prepare_standby(self) -> bool:
        """Start a standby unless one is waiting or a run started here is training (a
        standby's imports would take a core from it). Returns True when one is waiting."""
        with self._lock:
            if self._standby is not None and self._standby["proc"].poll() is None:
                return True
            if any(p.poll() is None for p in self._procs.values()):
                return False
            env = child_env()
            proc = subprocess.Popen([sys.executable, "-m", "tunelab.standby"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                    start_new_session=True, text=True)
            self._standby = {"proc": proc, "env": env, "cwd": os.getcwd(), "python": sys.executable}
        self._reap_when_done(proc)   # also once it has become a run (then _procs names it)
        return True

    def drop_standby(self) -> None:
        with self._lock:
            sb, self._standby = self._standby, None
        if sb is not None:
            _end(sb["proc"])

    def _take_standby(self, cmd: list[str], env: dict, log: Path) -> subprocess.Popen | None:
        """Hand `cmd` to the waiting standby; None when there is none that fits (then the
        caller starts the run cold). A standby that does not fit is ended."""
        with self._lock:
            sb, self._standby = self._standby, None
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


def _record_signal_death(run_dir: Path, signame: str) -> None:
    """A run process that a signal ended never wrote its own end: say what happened, so
    the Train and Runs tabs show the cause rather than a bare "interrupted"."""
    st = Status(run_dir)
    if st.state.get("status") not in ("running", "starting", "interrupted"):
        return  # it finished, stopped, was cancelled or failed on its own first
    step = st.state.get("step", 0)
    stopping = (run_dir / STOP_FILE).exists() or bool(st.state.get("stop_requested_at"))
    if stopping and st.state.get("phase") != TRAINING:
        # Our Stop before the first step: the app ended it (end_loading), nothing was trained.
        cancel_unstarted(run_dir)
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


def log_tail(run_id: str, lines: int = 20) -> str:
    from ..training.runs import find_run
    path = find_run(run_id) / LOG_FILE
    if not path.exists():
        return ""
    text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
