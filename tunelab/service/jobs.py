"""Training jobs started from the app: each run is its own process.

    jobs = Jobs()                      # once, by the app (app.py), and handed to the tabs
    run_id = jobs.launch(cfg)          # python -m tunelab train <run>/config.yaml --run-id <id>
    ...                                # follow runs/<id>/events.jsonl (events.EventTail)
    jobs.stop(run_id, by=user)         # training: it stops at the next step, saves, "stopped";
                                       # still loading: its process is ended, "cancelled"
    jobs.launch_resume(run_id, by=user)   # carries on from its last checkpoint; still its owner's run
    jobs.rename(run_id, title, by=user)   # the title the Runs tab shows; the id never changes
    jobs.delete(run_id, by=user)       # the run folder, gone

Runs belong to the people who started them: stop, resume, rename and delete ask
access.check first, whatever a page sent (`by` is the signed-in user; None is the host:
no login, or the CLI with cli=True).

At most TUNELAB_MAX_TRAININGS runs train at once (default 1); a launch beyond that is
queued (status "queued", first in first out) and starts when a slot frees; stop() on a
queued run cancels it. TUNELAB_ALLOW_TRAINING=0 refuses every launch.

A crash or an out-of-memory kill in training cannot take the app down, the UI never
waits on a training step, and a run started here is the same run the CLI would make
(the exact command is in the run folder's `command.txt`). The child's output goes to
`train.log` in the run folder.

Who trains next is decided under one lock (`QueueLock`) held by every Jobs object of every
process on the same workspace (the app, a CLI stopping a run, a second app on a shared
folder): a queued run starts once, and TUNELAB_MAX_TRAININGS holds across them.

`Jobs` owns all the state: the queue's lock and thread, whether a standby is wanted, and
the child processes (processes.Children). What only reads the run folders (queued,
queue_position, training_now, check, ...) are plain functions, also reachable on the object.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

try:  # file locks are POSIX-only; on Windows the lock guards this process's threads only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from .. import data as data_mod
from ..modelio import hub
from . import access, settings
from ..common import workspace
from ..training.config import RunConfig
from ..training.memory import NotEnoughMemory, check_memory, fit_memory
from . import standby
from .processes import LOG_FILE, Children, is_training, log_tail, send_signal   # LOG_FILE, log_tail re-exported
from ..training.run import resolve_hardware
from ..training.runfolder import RunError, Status, process_start_time, new_run_id
from ..training.stopping import STOP_FILE

__all__ = ["LOG_FILE", "Jobs", "check", "check_allowed", "cli_command", "command_for", "log_tail", "queue_position",
           "queued", "training_now"]

log_ = logging.getLogger(__name__)


def command_for(config_path: str | Path, run_id: str | None = None) -> list[str]:
    # The app checked the memory just before starting it (launch, start_queued): the child
    # need not estimate again, nor refuse on a figure a second later than the one the page showed.
    cmd = [sys.executable, "-m", "tunelab", "train", str(config_path), "-q", "--ignore-memory-check"]
    return cmd + (["--run-id", run_id] if run_id else [])


def cli_command(run_dir: Path) -> str:
    """The command a user types to make this run again from a terminal."""
    return f"python -m tunelab train {shlex.quote(str(Path(run_dir) / 'config.yaml'))}"


def check(cfg: RunConfig) -> RunConfig:
    """Everything that can fail in a second, before a process is started: the config,
    the hardware choice, and the data file (format, rows, fields)."""
    cfg.validate()
    resolve_hardware(cfg)
    hub.require(cfg.model)  # a hub id offline fails now, not ~70 s into the run
    data_mod.load_examples(cfg.data.train, cfg.objective)
    if cfg.data.eval:
        data_mod.load_examples(cfg.data.eval, cfg.objective)
    return cfg


def training_now() -> list[str]:
    """Run ids training in this workspace (from the app or the CLI)."""
    from ..training.runs import run_status
    return [d.name for d in sorted(workspace.runs_dir().iterdir())
            if (d / "status.json").is_file() and run_status(d).get("status") in ("running", "starting")]


def check_allowed() -> None:
    if not settings.allow_training():
        raise RunError("training is turned off on this server (TUNELAB_ALLOW_TRAINING=0)")


def _command(run_dir: Path, kind: str) -> list[str]:
    if kind == "resume":
        return [sys.executable, "-m", "tunelab", "resume", str(run_dir), "-q"]
    return command_for(run_dir / "config.yaml", run_dir.name)


def _must_queue() -> bool:
    return bool(queued()) or len(training_now()) >= settings.max_trainings()


# A run that cannot start yet has status "queued" in its own status.json (so the queue
# survives an app restart), with the time it joined and whether it trains or resumes.
# First in, first out; the Jobs object's thread starts the next one when a slot frees.

def queued() -> list[str]:
    """Run ids waiting for a training slot, first in line first."""
    from ..training.runfolder import read_json
    waiting = []
    for d in workspace.runs_dir().iterdir():
        st = read_json(d / "status.json") if d.is_dir() else {}
        if st.get("status") == "queued":
            waiting.append((st.get("queued_at") or 0.0, d.name))
    return [run_id for _, run_id in sorted(waiting)]


def memory_note(run_id: str) -> str | None:
    """What Start changed to fit the run in memory (its micro-batch), in a sentence; None: nothing."""
    return Status(workspace.runs_dir() / workspace.safe_name(run_id)).state.get("memory_note")


def queue_position(run_id: str) -> tuple[int, int] | None:
    """(place in line, counting from 1; how many wait) for a queued run, else None."""
    line = queued()
    return (line.index(run_id) + 1, len(line)) if run_id in line else None


def _describe(run_dir: Path, cfg: RunConfig) -> Status:
    """The run's status, with what the Train and Runs tabs show before its process writes
    its own (unless that process already runs)."""
    st = Status(run_dir)
    if st.state.get("status") != "running":
        st.state.update(run_id=run_dir.name, method=cfg.method, model=cfg.model, data=cfg.data.train,
                        name=cfg.name, max_steps=cfg.train.max_steps, step=st.state.get("step", 0))
    return st


class QueueLock:
    """The queue's lock: a reentrant lock for this process's threads, and while one holds it
    an exclusive lock on the workspace's `.queue.lock` file, for every other process (and every
    other Jobs object here) deciding who trains in the same workspace. The file lock goes with
    its file descriptor, so a process that dies holding it lets go."""

    FILE = ".queue.lock"

    def __init__(self):
        self._threads = threading.RLock()
        self._depth = 0              # how deep the thread holding _threads is nested
        self._file = None

    def __enter__(self) -> QueueLock:
        self._threads.acquire()
        try:
            if self._depth == 0:
                f = open(workspace.home() / self.FILE, "a")
                try:
                    if fcntl is not None:
                        fcntl.flock(f, fcntl.LOCK_EX)
                except BaseException:
                    f.close()
                    raise
                self._file = f
            self._depth += 1
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._file.close()      # lets go of the file lock
            self._file = None
        self._threads.release()


class Jobs:
    """The app's job queue and its child processes, with all their state. The app makes one
    and hands it to the tabs that start, stop or follow runs; the CLI makes its own."""

    # What only reads the run folders, here too so that a tab needs nothing else.
    check = staticmethod(check)
    check_allowed = staticmethod(check_allowed)
    cli_command = staticmethod(cli_command)
    log_tail = staticmethod(log_tail)
    queued = staticmethod(queued)
    queue_position = staticmethod(queue_position)
    memory_note = staticmethod(memory_note)
    training_now = staticmethod(training_now)

    def __init__(self):
        self.children = Children(on_run_end=self._keep_a_standby)
        self._queue_lock = QueueLock()
        self._scheduler: threading.Thread | None = None   # alive while runs wait in the queue
        self._standby_wanted = False

    # ------------------------------------------------------------------ starting runs

    def launch(self, cfg: RunConfig, run_id: str | None = None, owner: str | None = None) -> str:
        """Start `cfg` in a new process, or queue it when TUNELAB_MAX_TRAININGS runs are
        training already (see `start_queued`); return its run id at once. `owner` is the
        signed-in user who started it (None without a login, or from the CLI: the host's run);
        only they and the admins may stop, resume, rename or delete it (access.py)."""
        check(cfg)
        check_allowed()
        with self._queue_lock:   # queue or start is decided once: a run that starts now is the one memory-checked
            queue = _must_queue()
            note = None
            if not queue:   # starting now: it must fit in the memory free now (a queued one is checked at its turn)
                fit = fit_memory(cfg)
                cfg, note = fit.cfg, fit.note
            run_id = workspace.safe_name(run_id) if run_id else new_run_id(cfg)
            run_dir = workspace.runs_dir() / run_id
            run_dir.mkdir(parents=True, exist_ok=False)
            cfg.save(run_dir / "config.yaml")
            if note:
                Status(run_dir).update(memory_note=note)
            return self._start_or_queue(run_dir, "train", cfg, owner, queue)

    def launch_resume(self, run_id: str, by: str | None = None) -> str:
        """Resume a run in a new process, or queue it, as `launch` does; one that starts now
        must fit in the memory free now, as a new run must. `by` (the signed-in user; None: the
        host) must be allowed to (access.check); the run stays its owner's."""
        from ..training.runs import find_run, run_status
        run_dir = find_run(run_id)
        check_allowed()
        cfg = RunConfig.from_yaml(run_dir / "config.yaml")
        with self._queue_lock:
            st = run_status(run_dir)
            access.check(st, by, "resume")
            if st.get("status") in ("queued", "starting", "running"):
                raise RunError(f"{run_dir.name} is {st['status']}: only a run that ended can be resumed")
            queue = _must_queue()
            if not queue:
                check_memory(cfg)
            return self._start_or_queue(run_dir, "resume", cfg, access.owner_of(st), queue)

    def _start_or_queue(self, run_dir: Path, kind: str, cfg: RunConfig, owner: str | None = None,
                        queue: bool | None = None) -> str:
        """Queue the run or start it now; `queue` is the caller's decision, made under the lock
        (a training run can end between two looks at the queue)."""
        with self._queue_lock:
            # A new start: a stop recorded before it (a resumed run's) is not this one's.
            fresh = dict(owner=owner, stopped_by=None, stop_requested_at=None)
            if _must_queue() if queue is None else queue:
                _describe(run_dir, cfg).update(status="queued", queued_at=time.time(), queued_kind=kind, error=None,
                                               **fresh)
                self._ensure_scheduler()
                return run_dir.name
            return self._spawn(run_dir, _command(run_dir, kind), cfg, **fresh)

    def _spawn(self, run_dir: Path, cmd: list[str], cfg: RunConfig, **extra) -> str:
        """Start the run in `run_dir` now and mark it "starting" (its `phase` is its own to
        write: none yet)."""
        (run_dir / "command.txt").write_text(cli_command(run_dir) + "\n", encoding="utf-8")
        (run_dir / STOP_FILE).unlink(missing_ok=True)   # an earlier Stop's (a resume): the file means this one's
        proc = self.children.spawn(run_dir, cmd)
        _describe(run_dir, cfg).update(status="starting", pid=proc.pid, pid_start=process_start_time(proc.pid),
                                       error=None, phase=None, **extra)
        return run_dir.name

    # ------------------------------------------------------------------ the queue

    def start_queued(self) -> list[str]:
        """Start queued runs, oldest first, while fewer than TUNELAB_MAX_TRAININGS train."""
        started = []
        with self._queue_lock:
            if not settings.allow_training():
                return started
            for run_id in queued():
                if len(training_now()) >= settings.max_trainings():
                    break
                run_dir = workspace.runs_dir() / run_id
                st = Status(run_dir)
                try:
                    cfg, kind = RunConfig.from_yaml(run_dir / "config.yaml"), st.state.get("queued_kind", "train")
                    if kind == "train":   # its turn: the memory the earlier runs held is free now, or never will be
                        fit = fit_memory(cfg)
                        if fit.note:   # its batch fits now only as micro-batches: the folder says how it runs
                            cfg = fit.cfg
                            cfg.save(run_dir / "config.yaml")
                            st.update(memory_note=fit.note)
                    self._spawn(run_dir, _command(run_dir, kind), cfg)
                    started.append(run_id)
                except Exception as e:  # noqa: BLE001 — one broken entry must not block the line
                    why = str(e) if isinstance(e, NotEnoughMemory) else f"{type(e).__name__}: {e}"
                    st.update(status="failed", error=f"could not start from the queue: {why}", finished=time.time())
        return started

    def _ensure_scheduler(self) -> None:
        """A daemon thread that starts queued runs as slots free; it ends when the line is empty."""
        with self._queue_lock:
            if self._scheduler is not None and self._scheduler.is_alive():
                return
            self._scheduler = threading.Thread(target=self._schedule, daemon=True, name="tunelab-queue")
            self._scheduler.start()

    def _schedule(self) -> None:
        while True:
            time.sleep(1.0)
            try:
                self.children.reap()
                self.start_queued()
                with self._queue_lock:   # a launch queueing now either sees this thread alive or starts a new one
                    if not queued():
                        self._scheduler = None
                        return
            except Exception:  # noqa: BLE001 — a bad moment (a folder deleted mid-scan): try again
                log_.exception("queue scheduler")

    def resume_queue(self) -> bool:
        """At app start: carry on with runs that were queued before a restart."""
        with self._queue_lock:
            if queued():
                self._ensure_scheduler()
                return True
        return False

    # ------------------------------------------------------------------ processes and the standby

    def reap(self) -> list[str]:
        """The run ids still running here; ended ones recorded. With standbys on and nothing
        training or queued, make sure one is waiting. (Queued runs are started by the queue's
        own thread, which runs while the line is not empty.)"""
        self.children.reap()
        return self._keep_a_standby()

    def _keep_a_standby(self) -> list[str]:
        running = self.children.reap()
        if self._standby_wanted and not running and self._scheduler is None:   # nothing training or waiting to
            self.children.prepare_standby()
        return running

    def use_standby(self, on: bool = True) -> None:
        """Keep a standby training process ready (see tunelab/service/standby.py); the app turns
        this on. TUNELAB_STANDBY=0 overrides it."""
        self._standby_wanted = bool(on) and standby.enabled()
        if self._standby_wanted:
            self.children.prepare_standby()
        else:
            self.children.drop_standby()

    def prepare_standby(self) -> bool:
        """Start a standby unless one is waiting or a run started here is training."""
        return self.children.prepare_standby()

    # ------------------------------------------------------------------ Stop, delete, rename

    def stop(self, run_id: str, grace_s: float = 20.0, wait: bool = False, by: str | None = None,
             cli: bool = False) -> bool:
        """Ask a run to stop. Training: SIGTERM sets its stop flag, it finishes the current
        step, saves and exits ("stopped"); if it is still alive after `grace_s`, it is
        killed. Still loading (no step yet): its process is ended now and the run recorded
        "cancelled" (nothing was trained). A queued run is cancelled. Returns False when it
        was not running. `by` is the signed-in user asking (None: the host: no login, or the
        CLI with cli=True); only the run's owner or an admin may (access.check). Who stopped
        it is recorded in status.json (`stopped_by`, `stop_requested_at`), for its owner to see."""
        from ..training.runs import find_run, run_status
        run_dir = find_run(run_id)
        with self._queue_lock:
            st = run_status(run_dir)
            access.check(st, by, "stop")
            who = dict(stopped_by=access.actor(by, cli), stop_requested_at=time.time())
            if st.get("status") == "queued":   # not started: it leaves the line
                Status(run_dir).update(status="cancelled", finished=time.time(), **who)
                return True
            pid = st.get("pid")
            if st.get("status") not in ("running", "starting") or not pid:
                return False
            # Recorded before the signal: the run's own last writes keep it (runfolder.APP_FIELDS).
            Status(run_dir).update(**who)
        # The file first, the phase after (training/stopping.py): a run that begins training
        # meanwhile sees the file and stops at once.
        (run_dir / STOP_FILE).touch()
        training = is_training(run_dir)
        if training:
            send_signal(pid, signal.SIGTERM)

        def finish():
            if not training:
                self.children.end_loading(run_dir, pid)
            elif not self.children.wait_gone(run_dir, pid, grace_s):
                send_signal(pid, signal.SIGKILL)
                self.children.wait_gone(run_dir, pid, 30.0)
            self.reap()
        if wait:
            finish()
        else:
            threading.Thread(target=finish, daemon=True, name=f"tunelab-stop-{run_dir.name}").start()
        return True

    def delete(self, run_id: str, by: str | None = None) -> None:
        """Delete a run's folder (runs.delete_run: never a run that is training or queued), if
        `by` may (access.check: its owner or an admin; None is the host)."""
        from ..training.runs import delete_run, find_run, run_status
        run_dir = find_run(run_id)
        with self._queue_lock:   # the queue cannot start it between the check and the delete
            access.check(run_status(run_dir), by, "delete")
            delete_run(str(run_dir))

    def rename(self, run_id: str, title: str, by: str | None = None) -> str:
        """Give a run a display title (runs.rename_run: 1-80 characters, no control characters;
        the run id and folder never change), if `by` may (access.check). Returns the title."""
        from ..training.runs import find_run, rename_run, run_status
        run_dir = find_run(run_id)
        access.check(run_status(run_dir), by, "rename")
        return rename_run(str(run_dir), title)
