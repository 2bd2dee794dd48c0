"""How a training run and the arena's chat share the CPU cores while both run.

    cpushare.train_cores()      # cores a run keeps while people chat (TUNELAB_TRAIN_CORES)
    cpushare.chat_cores()       # cores the arena may use while a run trains
    cpushare.mark_chat()        # the arena: "I am answering" (a file's mtime in the workspace)
    cpushare.chat_active()      # a run, at each step: did anyone chat in the last CHAT_HOLD_S?
    with cpushare.training():   # a run: "I train" (a file named by its pid), gone when it ends
    cpushare.training_running() # the arena: does a run train in this workspace now?

Both sides compute with OpenMP thread pools, whose threads wait for each other at the end
of every operation. Two pools that each want every core take turns at best, and at worst
(one thread of a pool kept off its core) every operation of both waits: measured on a
2-core machine, a 6-step LoRA run took 278 s beside a chatting room against 39 s alone,
with the run at a lower priority (nice 10), so the room starved it.

So while people chat, the cores are split: the run computes on `train_cores()` threads
(half the cores, rounded up: 1 of 2) and the arena's decode loops on the rest, each on
its own cores, and neither waits on the other. When nobody has chatted for CHAT_HOLD_S
seconds the run takes every core again at its next step; when no run trains the arena
has them all. TUNELAB_TRAIN_CORES=all turns the split off (the run computes on every
core, at TUNELAB_TRAIN_NICE), a number sets the run's share.
`benchmarks/bench_workshop.py --share` measures the choices side by side (benchmarks/README.md
has the figures; docs/arena.md, "Training beside a chatting room", the design).

The two sides are different processes (the app, a run started from it or from the CLI in
the same workspace); they meet through two small marks in the workspace's `.cpushare/`
folder. No torch here: the callers set their own thread counts.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

from . import workspace

CHAT_HOLD_S = 5.0     # a chat this recent still counts: people read and type between turns
_MARK_EVERY_S = 0.5   # the arena touches its mark at most this often
_LOOK_EVERY_S = 1.0   # the arena looks for training runs at most this often
_last_mark = 0.0
_last_look: tuple[float, bool] = (0.0, False)


def cores() -> int:
    """The cores this process may compute on: the CPUs it may run on, capped by
    OMP_NUM_THREADS where that is set to a whole number (the usual way to tell a process on
    a shared machine how many threads to use; torch sizes its own pool from it, and a run
    that widened its pool again at each step would undo it)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return n
    return max(1, min(n, cap)) if cap >= 1 else n


def train_cores() -> int | None:
    """Cores a run computes on while people chat: TUNELAB_TRAIN_CORES = "half" (the default:
    half the cores, rounded up), a whole number, or "all" (None: no split)."""
    raw = os.environ.get("TUNELAB_TRAIN_CORES", "").strip().lower() or "half"
    n = cores()
    if raw == "all":
        return None
    if raw == "half":
        return max(1, math.ceil(n / 2)) if n > 1 else None
    try:
        k = int(raw)
    except ValueError:
        raise ValueError(f"TUNELAB_TRAIN_CORES must be 'half', 'all' or a whole number >= 1 (got {raw!r})") from None
    if k < 1:
        raise ValueError(f"TUNELAB_TRAIN_CORES must be 'half', 'all' or a whole number >= 1 (got {raw!r})")
    return None if k >= n else k


def chat_cores() -> int:
    """Cores the arena computes on while a run trains (all of them without a split)."""
    k = train_cores()
    return cores() if k is None else max(1, cores() - k)


def _folder() -> Path:
    d = workspace.home() / ".cpushare"
    d.mkdir(exist_ok=True)
    return d


def mark_chat(now: float | None = None) -> None:
    """The arena is computing an answer (called at each decode step; cheap)."""
    global _last_mark
    now = time.time() if now is None else now
    if now - _last_mark < _MARK_EVERY_S:
        return
    _last_mark = now
    path = _folder() / "chat"
    try:
        path.touch()
        os.utime(path, (now, now))
    except OSError:
        pass   # a read-only workspace: no split, nothing else lost


def chat_active(now: float | None = None, hold_s: float = CHAT_HOLD_S) -> bool:
    """Whether the arena answered anyone in the last `hold_s` seconds."""
    now = time.time() if now is None else now
    try:
        return now - (_folder() / "chat").stat().st_mtime < hold_s
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def training():
    """Mark this process as a training run for as long as the block runs."""
    path = _folder() / f"train-{os.getpid()}"
    try:
        path.touch()
    except OSError:
        path = None
    try:
        yield
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def training_running(now: float | None = None) -> bool:
    """Whether a run trains in this workspace now (a mark whose process lives; a mark left
    by a killed run is removed). Looked up at most once a second."""
    global _last_look
    now = time.monotonic() if now is None else now
    if now - _last_look[0] < _LOOK_EVERY_S:
        return _last_look[1]
    found = False
    try:
        for p in _folder().glob("train-*"):
            try:
                pid = int(p.name.split("-", 1)[1])
            except ValueError:
                continue
            if _alive(pid):
                found = True
            else:
                p.unlink(missing_ok=True)
    except OSError:
        pass
    _last_look = (now, found)
    return found


def threads_for_training() -> int:
    """The intra-op threads a run uses for its next step: its share while people chat,
    every core otherwise."""
    k = train_cores()
    return k if k is not None and chat_active() else cores()
