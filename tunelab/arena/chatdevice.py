"""Where and on how many threads the arena computes: its device, the dtype its models
load in, and the intra-op threads each generation thread uses (chat.py generates).
"""

from __future__ import annotations

import functools
import os
import statistics
from collections import deque

from ..common import cpushare
from ..modelio import loading


def default_device() -> str:
    """Where the arena generates: the GPU when there is one."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def chat_dtype(device: str):
    """The dtype arena models load in: TUNELAB_CHAT_DTYPE = float32 (the default),
    bfloat16, or auto (bf16 where the device computes it natively, else float32).

    bf16 halves the weights' memory (the bundled base: 257 MB against 513) and, with the
    shared decode loop batching every user's answers, is faster on CPUs with AVX512-BF16 or
    AMX (measured on the 2-core machine, the loop's thread: 60 answers at once 544 against
    257 tokens/s). But it is not the model the labs are checked with: the bundled base's
    weights rounded to bf16 answer differently, and a small adapter's effect can drown in
    the rounding. Measured on lab 4 (DPO, concise answers): decoded in fp32 the held-out
    answers go from 52.5 to 27.5 words (the check passes); in bf16, from 37.5 to 38 (it
    fails; with the activations kept in fp32 and only the weights in bf16, 36.5 to 34.5).
    So float32 is the default, and bf16 a host's choice for throughput (see the workshop
    table in benchmarks/README.md). Where bf16 is emulated (AVX2 only) auto keeps float32."""
    import torch
    want = os.environ.get("TUNELAB_CHAT_DTYPE") or "float32"
    if want == "auto":
        return torch.bfloat16 if loading.bf16_supported(device) else torch.float32
    return torch.bfloat16 if want == "bfloat16" else torch.float32


def _threads_setting() -> int | None:
    """TUNELAB_ARENA_THREADS as a count, or None when it is unset or not a number."""
    try:
        return max(1, int(os.environ.get("TUNELAB_ARENA_THREADS", "")))
    except ValueError:
        return None


def threads_fixed() -> bool:
    """True when TUNELAB_ARENA_THREADS sets the count (then no ThreadTuner changes it)."""
    return _threads_setting() is not None


def generation_threads(groups: int = 1) -> int:
    """Intra-op threads a generation thread uses: TUNELAB_ARENA_THREADS, or else the
    process's default (the core count) when one model generates and 1 each when several
    models generate at once.

    OpenMP (GNU libgomp, as in PyTorch's wheels) keeps a pool of worker threads for every
    thread that ever ran a multi-threaded op, and once the pools hold more threads than
    there are cores its workers stop spinning between ops. A decode step is some 1,000
    small ops, so then each one waits to wake a sleeping worker. Measured on a 2-core
    machine (fp32, base + LoRA rows in one batch): a 2-row step took 61-77 ms in a thread
    when no other thread had a pool, 135-280 ms when the main thread had one, 110-127 ms
    with 1 thread. So arena threads are short-lived (their pool goes with them), models
    load inside them, and the app keeps its other threads to 1 (`reserve_cores`).

    While a run trains in the workspace, the loops keep to the cores it leaves them
    (`cpushare.chat_cores()`: one of two), so that neither pool waits on the other."""
    fixed = _threads_setting()
    if fixed is not None:
        return fixed
    most = default_threads() if groups == 1 else 1
    if cpushare.training_running():   # the run keeps its share of the cores (common/cpushare.py)
        most = min(most, cpushare.chat_cores())
    return most


def reserve_cores() -> None:
    """Run this process's other threads on one intra-op thread from now on, so that only
    arena generation threads keep OpenMP pools (see generation_threads). For the app; the
    core count seen before is still what generation uses."""
    import torch
    default_threads()
    torch.set_num_threads(1)


@functools.cache
def default_threads() -> int:
    """The number of threads torch computes with in this process now."""
    import torch
    return torch.get_num_threads()


class ThreadTuner:
    """A decode loop's intra-op thread count, chosen by measuring its own steps.

    On cores nothing else uses, a decode step is fastest on all of them. When other work
    wants the cores too (the app's web server under thirty people, a training run, the
    browsers of a shared laptop), the loop's OpenMP threads wait for each other at the end
    of each of a step's thousand-odd small operations, for as long as the scheduler keeps
    one of them off its core, and a step on one thread is faster. Measured through the
    app on the 2-core machine (benchmarks/bench_workshop.py, bf16, 30 people): both
    threads 157-164 tokens/s in all, one thread 168; beside a training run at the app's
    run priority, both threads 136, one 156. With one person, both threads are faster
    (19.2 against 15.3 tokens/s a pane).

    So the loop runs on `most` threads and, every `every` decode steps, runs `trial` steps
    on the other choice (1 or `most`) and keeps whichever took less time per answer, by
    the median of the trial against the median of the steps just before it; the first
    step after a change is not counted (the thread pool wakes up). Steps that prefill a
    prompt are not compared (they cost more per answer). A trial costs a few slower steps
    in a hundred when it loses."""

    def __init__(self, every: int = 100, trial: int = 4, margin: float = 0.05):
        self.every, self.trial, self.margin = every, trial, margin
        self.current: int | None = None
        self.recent: deque = deque(maxlen=trial)   # seconds per answer of the last steps on `current`
        self.since = 0                             # decode steps on `current` since the last trial
        self.trying: int | None = None
        self.tried: list[float] = []
        self.skip = True                           # the next step ran just after a change
        self.trials = self.changes = 0

    def choose(self, most: int) -> int:
        """The thread count for the next step, with `most` the most it may use."""
        most = max(1, int(most))
        if self.current is None or self.current > most or (self.current != 1 and self.current != most):
            self.current, self.trying, self.skip = most, None, True
            self.recent.clear()
        if most == 1:
            return 1
        if self.trying is None and self.since >= self.every and len(self.recent) == self.trial:
            self.trying, self.tried, self.skip = (1 if self.current == most else most), [], True
            self.trials += 1
        return self.trying or self.current

    def record(self, threads: int, seconds: float, answers: int, prefill: bool) -> None:
        """What the step run on `threads` took, for `answers` answers."""
        skip, self.skip = self.skip, False
        if skip or prefill or answers < 1:
            return
        per = seconds / answers
        if self.trying is not None and threads == self.trying:
            self.tried.append(per)
            if len(self.tried) >= self.trial:
                if statistics.median(self.tried) < statistics.median(self.recent) * (1 - self.margin):
                    self.current = self.trying
                    self.recent = deque(self.tried, maxlen=self.trial)
                    self.changes += 1
                self.trying, self.since, self.skip = None, 0, True
        elif threads == self.current:
            self.recent.append(per)
            self.since += 1

    def stats(self) -> dict:
        return {"threads": self.current, "thread_trials": self.trials, "thread_changes": self.changes}
