"""Training jobs started from the app: each run is its own process.

    run_id = launch(cfg)        # python -m tunelab train <run>/config.yaml --run-id <id>
    ...                          # follow runs/<id>/events.jsonl (events.EventTail)
    stop(run_id)                 # SIGTERM: stops at the next step, saves, marks "stopped"
                                 # (before the first step: ends at once, "cancelled")

At most TUNELAB_MAX_TRAININGS runs train at once (default 1); a launch beyond that is
queued (status "queued", first in first out) and starts when a slot frees; stop() on a
queued run cancels it. TUNELAB_ALLOW_TRAINING=0 refuses every launch.

A crash or an out-of-memory kill in training cannot take the app down, the UI never
waits on a training step, and a run started here is the same run the CLI would make
(the exact command is in the run folder's `command.txt`). The child's output goes to
`train.log` in the run folder. Every child (run or standby) has a thread that waits for
it, so an ended process is reaped at once and its end recorded, whether or not a page is
following it (no `<defunct>` children left behind).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import data as data_mod
from . import hub, settings, standby, workspace
from .config import RunConfig
from .memory import NotEnoughMemory, check_memory
from .run import resolve_hardware
from .runfolder import RunError, Status, _process_start_time, new_run_id
from .stopping import STOP_FILE, cancelled_note

LOG_FILE = "train.log"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_procs: dict[str, subprocess.Popen] = {}
log_ = logging.getLogger(__name__)
_lock = threading.Lock()


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
    from .runs import run_status
    return [d.name for d in sorted(workspace.runs_dir().iterdir())
            if (d / "status.json").is_file() and run_status(d).get("status") in ("running", "starting")]


def check_allowed() -> None:
    if not settings.allow_training():
        raise RunError("training is turned off on this server (TUNELAB_ALLOW_TRAINING=0)")


def launch(cfg: RunConfig, run_id: str | None = None, owner: str | None = None) -> str:
    """Start `cfg` in a new process, or queue it when TUNELAB_MAX_TRAININGS runs are
    training already (see `start_queued`); return its run id at once. `owner` is the
    signed-in user who started it (None without a login): only they may stop it."""
    check(cfg)
    check_allowed()
    if not _must_queue():   # starting now: it must fit in the memory free now (a queued one is checked at its turn)
        check_memory(cfg)
    run_id = workspace.safe_name(run_id) if run_id else new_run_id(cfg)
    run_dir = workspace.runs_dir() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    cfg.save(run_dir / "config.yaml")
    return _start_or_queue(run_dir, "train", cfg, owner)


def launch_resume(run_id: str, owner: str | None = None) -> str:
    from .runs import find_run
    run_dir = find_run(run_id)
    check_allowed()
    return _start_or_queue(run_dir, "resume", RunConfig.from_yaml(run_dir / "config.yaml"), owner)


# --------------------------------------------------------------------------- the queue
# A run that cannot start yet has status "queued" in its own status.json (so the queue
# survives an app restart), with the time it joined and whether it trains or resumes.
# First in, first out; a background thread starts the next one when a slot frees.

_queue_lock = threading.RLock()
_scheduler: threading.Thread | None = None


def _command(run_dir: Path, kind: str) -> list[str]:
    if kind == "resume":
        return [sys.executable, "-m", "tunelab", "resume", str(run_dir), "-q"]
    return command_for(run_dir / "config.yaml", run_dir.name)


def _must_queue() -> bool:
    return bool(queued()) or len(training_now()) >= settings.max_trainings()


def _start_or_queue(run_dir: Path, kind: str, cfg: RunConfig, owner: str | None = None) -> str:
    with _queue_lock:
        if _must_queue():
            _describe(run_dir, cfg).update(status="queued", queued_at=time.time(), queued_kind=kind, error=None,
                                           owner=owner)
            _ensure_scheduler()
            return run_dir.name
        return _spawn(run_dir, _command(run_dir, kind), cfg, owner=owner)


def queued() -> list[str]:
    """Run ids waiting for a training slot, first in line first."""
    from .runfolder import read_json
    waiting = []
    for d in workspace.runs_dir().iterdir():
        st = read_json(d / "status.json") if d.is_dir() else {}
        if st.get("status") == "queued":
            waiting.append((st.get("queued_at") or 0.0, d.name))
    return [run_id for _, run_id in sorted(waiting)]


def queue_position(run_id: str) -> tuple[int, int] | None:
    """(place in line, counting from 1; how many wait) for a queued run, else None."""
    line = queued()
    return (line.index(run_id) + 1, len(line)) if run_id in line else None


def start_queued() -> list[str]:
    """Start queued runs, oldest first, while fewer than TUNELAB_MAX_TRAININGS train."""
    started = []
    with _queue_lock:
        if not settings.allow_training():
            return started
        for run_id in queued():
            if len(training_now()) >= settings.max_trainings():
                break
            run_dir = workspace.runs_dir() / run_id
            st = Status(run_dir)
            try:
                cfg, kind = RunConfig.from_yaml(run_dir / "config.yaml"), st.state.get("queued_kind", "train")
                if kind == "train":
                    check_memory(cfg)   # its turn: the memory the earlier runs held is free now, or never will be
                _spawn(run_dir, _command(run_dir, kind), cfg)
                started.append(run_id)
            except Exception as e:  # noqa: BLE001 — one broken entry must not block the line
                why = str(e) if isinstance(e, NotEnoughMemory) else f"{type(e).__name__}: {e}"
                st.update(status="failed", error=f"could not start from the queue: {why}", finished=time.time())
    return started


def _ensure_scheduler() -> None:
    """A daemon thread that starts queued runs as slots free; it ends when the line is empty."""
    global _scheduler
    if _scheduler is not None and _scheduler.is_alive():
        return

    def loop():
        global _scheduler
        while True:
            time.sleep(1.0)
            try:
                reap()
                start_queued()
                with _queue_lock:   # a launch queueing now either sees this thread alive or starts a new one
                    if not queued():
                        _scheduler = None
                        return
            except Exception:  # noqa: BLE001 — a bad moment (a folder deleted mid-scan): try again
                log_.exception("queue scheduler")
    _scheduler = threading.Thread(target=loop, daemon=True, name="tunelab-queue")
    _scheduler.start()


def resume_queue() -> bool:
    """At app start: carry on with runs that were queued before a restart."""
    with _queue_lock:
        if queued():
            _ensure_scheduler()
            return True
    return False


def _child_env() -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["TUNELAB_HOME"] = str(workspace.home())
    return env


def _spawn(run_dir: Path, cmd: list[str], cfg: RunConfig, **extra) -> str:
    env = _child_env()
    (run_dir / "command.txt").write_text(cli_command(run_dir) + "\n", encoding="utf-8")
    (run_dir / STOP_FILE).unlink(missing_ok=True)   # an earlier Stop's (a resume): the file means this one's
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
    _describe(run_dir, cfg).update(status="starting", pid=proc.pid, pid_start=_process_start_time(proc.pid),
                                   error=None, **extra)
    return run_dir.name


def _hold_sigterm() -> None:
    """In a child, before exec: SIGTERM is held (blocked, so it waits) until the new process
    can catch it (stopping.catch unblocks it). A Stop in its first instant, while Python
    starts, is then handled like any other instead of killing it mid-import."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _run_child_setup() -> None:
    _hold_sigterm()
    standby.lower_priority()


def _describe(run_dir: Path, cfg: RunConfig) -> Status:
    """The run's status, with what the Train and Runs tabs show before its process writes
    its own (unless that process already runs)."""
    st = Status(run_dir)
    if st.state.get("status") != "running":
        st.state.update(run_id=run_dir.name, method=cfg.method, model=cfg.model, data=cfg.data.train,
                        name=cfg.name, max_steps=cfg.train.max_steps, step=st.state.get("step", 0))
    return st


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
    if _standby_wanted and not running and _scheduler is None:   # nothing training or waiting to
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
        # its first import on, see stopping.py); SIGKILL: the grace period ran out first.
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
    """Keep a standby training process ready (see tunelab/standby.py); the app turns
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
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.standby"], stdin=subprocess.PIPE,
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


def stop(run_id: str, grace_s: float = 20.0, wait: bool = False, by: str | None = None) -> bool:
    """Ask a run to stop (SIGTERM: it finishes the current step, saves, exits; before its
    first step it ends at once as "cancelled"); if it is still alive after `grace_s`, kill it. A queued run is cancelled. Returns False when it
    was not running. `by` is the signed-in user asking (None: the host, or no login): a
    run started by another signed-in user is theirs to stop."""
    from .runs import find_run, run_status
    run_dir = find_run(run_id)
    with _queue_lock:
        st = run_status(run_dir)
        owner = st.get("owner")
        if owner and by is not None and by != owner:
            raise RunError(f"{run_dir.name} was started by {owner}; only they (or the host, from the CLI) "
                           f"can stop it")
        if st.get("status") == "queued":   # not started: it leaves the line
            Status(run_dir).update(status="cancelled", finished=time.time())
            return True
    pid = st.get("pid")
    if st.get("status") not in ("running", "starting") or not pid:
        return False
    (run_dir / STOP_FILE).touch()  # also seen by a run that cannot receive our signal
    _signal(pid, signal.SIGTERM)

    def finish():
        t0 = time.time()
        while time.time() - t0 < grace_s:
            if not _alive(run_dir, pid):
                break
            time.sleep(0.2)
        else:
            _signal(pid, signal.SIGKILL)
        reap()
    if wait:
        finish()
    else:
        threading.Thread(target=finish, daemon=True).start()
    return True


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
    from .runs import find_run
    path = find_run(run_id) / LOG_FILE
    if not path.exists():
        return ""
    text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])

