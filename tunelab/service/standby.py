"""A training process started ahead of time, so that pressing Start skips the imports.

A new `python -m tunelab train ...` spends ~7 s of a 2-core machine importing torch,
transformers, PEFT and TRL before it reads its config. The app keeps one process that
has done that and waits (`python -m tunelab.standby`, which hands `serve` the CLI's `main`);
`processes` hands it the next run's
command line, its log file and its environment, and it becomes that run: the same
`tunelab` CLI, the same run folder, the same process rules (its own session, Stop by
signal). The next standby is started once no training is running, so it never takes a
core from a run. A standby whose environment or interpreter no longer matches the app's
is not used (the run starts cold) and is replaced.

Protocol: one JSON line on stdin, {"argv": [...], "log": "<path>", "env": {...}}. End of
input (the app went away) ends the standby. TUNELAB_STANDBY=0 turns the whole thing off.

The app's death ends a standby at once, even mid-import: stdin is read only once the
imports are done, and a standby whose app was stopped while it imported outlived it by
minutes. A thread watches the app's pid (TUNELAB_APP_PID, training/stopping.watch_app);
with no run handed over there is nothing to save and the process exits on the spot.
Once it has become a run, the app's end stops that run as it would any run the app
started: "interrupted" at its next step, with a checkpoint to resume from.

A SIGTERM or SIGINT only sets the process's stop flag (training/stopping.py): the
imports stop after the module being imported (never halfway: a stop raised inside
torch's import once left the process to crash as it exited), and a waiting standby with
no run handed over ends. A run handed to a standby that still imports is not yet
training, so the app's Stop ends its process and records it "cancelled" (processes.py).

Priority: a standby imports at nice 19, taking only what nothing else wants, and goes
back to the runs' priority (TUNELAB_TRAIN_NICE) when a run is handed over, even in the
middle of its imports (the run waits on them). Where the process could not go back (a
user without the privilege or an RLIMIT_NICE for it, as on a Space) it imports at the
runs' priority from the start, so that no run trains at 19 for good.
"""

from __future__ import annotations

import json
import os
import select
import sys
from typing import Callable

from ..common.imports import import_ahead

# What a training run imports before its first step (tunelab.training.run pulls in the rest lazily).
PRELOAD = ("torch", "transformers", "transformers.models.auto", "peft", "trl", "datasets",
           "tunelab.training.run", "tunelab.methods.heads", "tunelab.methods.lora", "tunelab.methods.full",
           "tunelab.methods.qlora", "tunelab.methods.dpo")


# Variables the app's own libraries set in its process after a standby has started: torch
# sets the first when imported (a standby does too), Gradio the second when its analytics
# are off. A run reads them after it has taken the app's environment, so they are not a
# reason to start cold; any other difference is.
SET_BY_IMPORTS = frozenset({"TORCHINDUCTOR_CACHE_DIR", "HF_HUB_DISABLE_TELEMETRY"})


# Training started from the app (from a standby or not) runs at the app's own CPU priority
# (TUNELAB_TRAIN_NICE=0, the default). It used to run at nice 10, so that the page and the
# arena answered first; beside a chatting room that starved it (a 6-step run took 278 s
# against 39 s alone). Now the cores are split while people chat (common/cpushare.py), and
# measured with that split, six people chatting beside a run (benchmarks/bench_workshop.py
# --share, 2 cores): at nice 0 the run kept 0.53 of its speed alone and the chat's p95
# first token was 0.66x its figure without training; at nice 10 the run kept 0.42 (0.103
# against 0.247 steps/s) and the chat 0.72x. A host who wants the page first sets 10.
PRELOAD_NICENESS = 19
DEFAULT_NICENESS = 0


def niceness() -> int:
    try:
        return max(0, int(os.environ.get("TUNELAB_TRAIN_NICE", str(DEFAULT_NICENESS))))
    except ValueError:
        return DEFAULT_NICENESS


def lower_priority() -> None:
    """This process (a run started from the app) at `niceness()`."""
    set_priority(niceness())


def set_priority(n: int) -> bool:
    """Set this process's nice value to `n`. A run has a session of its own, and where
    Linux groups the scheduling by session (autogroup) a nice value counts only inside
    the group, so the group's own value is set too. Going back up (19 to 10) needs a
    privilege or an RLIMIT_NICE most users have not got: False when it did not happen."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, n)
    except OSError:
        return False
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(n))
    except OSError:
        pass  # no autogroup (other systems, or turned off): the plain nice value counts
    return True


def can_return_to(n: int) -> bool:
    """Whether this process could lower its nice value back to `n` after raising it: root
    can, and so can a user whose RLIMIT_NICE allows it (its ceiling is 20 - the limit); most
    users, on a Space too, cannot."""
    if n >= PRELOAD_NICENESS or os.geteuid() == 0:
        return True
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (ImportError, AttributeError, OSError, ValueError):
        return False
    return soft == resource.RLIM_INFINITY or n >= 20 - soft


def preload_niceness() -> int:
    """The nice value a standby imports at: PRELOAD_NICENESS where it can come back to the
    runs' `niceness()` once handed a run; else the runs' own value (it would otherwise
    train at 19 for good)."""
    return PRELOAD_NICENESS if can_return_to(niceness()) else max(niceness(), 0)


def enabled() -> bool:
    return os.environ.get("TUNELAB_STANDBY", "1").strip().lower() not in ("0", "false", "no", "off")


def preload(stopped, job_waiting: Callable[[], bool] = lambda: False) -> None:
    """Import PRELOAD, module by module, until `stopped()`. Once `job_waiting()` (a run was
    handed over while this process still imports), the rest is imported at the runs'
    priority: the run waits on these imports, so they are no longer spare work."""
    hurried = []

    def hurry_once_a_run_waits():
        if not hurried and job_waiting():
            hurried.append(True)
            if niceness() < preload_niceness():
                set_priority(niceness())
    import_ahead(PRELOAD, stopped, hurry_once_a_run_waits)


def _become(job: dict, run_cli: Callable[[list[str]], int]) -> int:
    """Point stdout/stderr at the run's log, take the run's environment, run the CLI (`run_cli`)."""
    log_fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.environ.clear()
    os.environ.update(job["env"])
    if niceness() < preload_niceness():
        set_priority(niceness())
    print(f"(started from a standby process, pid {os.getpid()}, its imports done in advance)", flush=True)
    return run_cli(list(job["argv"]))


_handed_a_run = False   # set once a job line is read: from then on this process is a run


def _app_ended() -> None:
    """The app that started this standby is gone (stopping.watch_app's thread calls this)."""
    from tunelab.training import stopping
    if not _handed_a_run:
        os._exit(0)   # waiting or importing: nothing to save, and the main thread may be deep in an import
    stopping.stop_for_app()


def serve(run_cli: Callable[[list[str]], int], stdin=None) -> int:
    """Preload, wait for the job line, then become the run: `run_cli(argv)` (the CLI's `main`)."""
    global _handed_a_run
    from tunelab.training import stopping
    stopping.catch()
    stopping.watch_app(_app_ended)
    # While it waits, a standby takes only what nothing else wants (the app starting, a
    # browser drawing the page); once it is a run, it has the runs' priority where allowed.
    set_priority(preload_niceness())
    stdin = stdin or sys.stdin
    # after a stop, the run handed over (if any) sees it as it starts
    preload(stopping.requested, lambda: bool(select.select([stdin], [], [], 0)[0]))
    line = _next_job(stdin, stopping.requested)
    if not line.strip():
        return 0  # the app closed the pipe, or ended this standby: nothing to do
    _handed_a_run = True
    return _become(json.loads(line), run_cli)


def _next_job(stdin, stopped) -> str:
    """The job line; "" at end of input, or when `stopped()` and no job was handed over.
    The app writes the job before the run's pid is known to anyone who could stop it, so
    a Stop always finds its job here."""
    while True:
        if select.select([stdin], [], [], 0.5)[0]:
            return stdin.readline()
        if stopped():
            return ""
