"""Does a run fit in the memory free now? Asked before a run starts, by the app and the CLI alike.

    from tunelab.training.memory import check_memory, NotEnoughMemory
    check_memory(cfg)        # the estimate, or NotEnoughMemory naming the estimate, what is free and what to lower
    fit = fit_memory(cfg)    # the same, but a batch that would not fit becomes smaller micro-batches:
    fit.cfg, fit.note        # the config that runs, and the sentence that says so (None: unchanged)

A run whose estimated peak (tunelab.training.estimate) is above what the machine has free would
be killed by the kernel's out-of-memory killer minutes later, or thrash and not answer a
Stop (a user saw batch 100000 start, estimated at 34 TB, and end "stopped by force"). So
the app's Start and `python -m tunelab train` refuse it up front; the CLI's
`--ignore-memory-check` starts it anyway, for experts who know the estimate is high for
their case. Before refusing, a new run's batch is split into micro-batches with gradient
accumulation where that fits (train.auto_micro_batch, on by default): the same examples a
step, less memory for activations. A queued run is checked when its turn comes (jobs.start_queued): while
another run trains, its memory is not free, and it will be when that run ends.

What "free" is:
- CPU: the RAM the kernel could hand out without swapping (psutil's `available`: free
  memory plus caches it can drop). In the process that will train (the CLI), what it
  already holds counts as its own: the estimate includes the process itself.
- GPU: `torch.cuda.mem_get_info` on the device the run will use (LOCAL_RANK under
  `accelerate launch`). The estimate there counts tensors only, so a new process's CUDA
  context is added.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

from .config import ConfigError, RunConfig

MB = 2**20
# The CUDA context a new training process creates on its GPU (kernels, cuBLAS workspace):
# 0.3-0.5 GB for recent drivers (the estimate's own note); the upper end, so as not to start a run that cannot fit.
CUDA_CONTEXT_MB = 512

log = logging.getLogger(__name__)


class NotEnoughMemory(ConfigError):
    """The run's estimated peak memory is above what the machine has free. Not one field's
    fault: the message names the estimate, what is free and the fields that lower it."""


def free_memory_mb(device: str, this_process: bool = False) -> tuple[float, str]:
    """(MB a new run could use now, what that figure is) on `device` ("cpu" or "cuda")."""
    if device == "cuda":
        import torch
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        free, total = torch.cuda.mem_get_info(index)
        return free / MB, f"free on GPU {index} ({torch.cuda.get_device_name(index)}, {gb(total / MB)} in all)"
    import psutil
    available = psutil.virtual_memory().available
    if this_process:  # this process becomes the run, and the estimate counts it already
        available += psutil.Process().memory_info().rss
    return available / MB, "RAM available"


def check_memory(cfg: RunConfig, this_process: bool = False, override: str | None = None) -> dict | None:
    """The estimate of `cfg`, or NotEnoughMemory when its peak is above the memory free
    now. `this_process`: the caller is the process that will train (the CLI). `override`:
    how the caller's user starts it anyway, added to the message. Returns None (no check)
    when there is no estimate (a model folder that is not there, an architecture it
    cannot build): the run itself then says what is wrong, in its own words and status.
    The config is taken as it is; `fit_memory` also tries smaller micro-batches."""
    return fit_memory(cfg, this_process, override, split=False).est


@dataclass
class Fit:
    """A config as it will run in the memory free now: `cfg` is the one given, or (when its
    batch would not fit and train.auto_micro_batch is on) the same run in smaller
    micro-batches, and then `note` says so in a sentence a person reads."""
    cfg: RunConfig
    est: dict | None
    note: str | None = None


def fit_memory(cfg: RunConfig, this_process: bool = False, override: str | None = None,
               est: dict | None = None, split: bool = True) -> Fit:
    """`cfg` fitted to the memory free now, or NotEnoughMemory when not even one example a
    micro-batch fits. A batch that would not fit is split into the largest micro-batch that
    does (a divisor of train.batch_size, so each optimiser step still sees batch_size ×
    grad_accum examples: train.grad_accum grows by the same factor). Only a batch no larger
    than the training rows is split (a larger one is refused: the message says how many rows
    fit). `est`: cfg's estimate, when the caller has it already; `split=False`: never split
    (check_memory)."""
    est = est or _estimate(cfg)
    if est is None:
        return Fit(cfg, None)
    need, procs = _need(est, this_process)
    free_mb, what = free_memory_mb(est["device"], this_process)
    if need <= free_mb:
        return Fit(cfg, est)
    t = cfg.train
    # Only a batch that the data fills: a larger one is already cut to the rows there are, and
    # splitting its number would make each step cycle through the data many times over.
    if split and t.auto_micro_batch and est["batch_size"] == t.batch_size:
        for micro in (d for d in range(t.batch_size - 1, 0, -1) if t.batch_size % d == 0):
            trial = copy.deepcopy(cfg)
            trial.train.batch_size, trial.train.grad_accum = micro, t.grad_accum * (t.batch_size // micro)
            trial_est = _estimate(trial)
            if trial_est is None:
                break
            trial_need, _ = _need(trial_est, this_process)
            if trial_need <= free_mb:
                note = (f"A batch of {t.batch_size} would need about {gb(need)} and {gb(free_mb)} is {what}: "
                        f"it trains as {t.batch_size // micro} micro-batches of {micro} (train.grad_accum "
                        f"{trial.train.grad_accum}), the same {t.batch_size * t.grad_accum} examples a step, "
                        f"at about {gb(trial_need)}.")
                return Fit(trial, trial_est, note)
    raise NotEnoughMemory(refusal(cfg, est, need, free_mb, what, procs) + (f" ({override})" if override else ""))


def _estimate(cfg: RunConfig) -> dict | None:
    from .estimate import estimate
    try:
        return estimate(cfg)
    except Exception as e:  # noqa: BLE001 — this check judges memory only, and never on a guess
        log.warning("memory check skipped: no estimate (%s: %s)", type(e).__name__, e)
        return None


def _need(est: dict, this_process: bool) -> tuple[float, int]:
    """(MB the run needs at its peak on its device, the processes it runs as there)."""
    # Processes of one run on this machine (`accelerate launch` on CPUs shares the RAM).
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if est["device"] == "cpu" else 1
    need = est["peak_memory_mb"] * procs
    if est["device"] == "cuda" and not this_process:
        need += CUDA_CONTEXT_MB
    return need, procs


def refusal(cfg: RunConfig, est: dict, need: float, free: float, what: str, procs: int = 1) -> str:
    """The message: the estimate, what is free, and what would lower it for this config."""
    batch, length = est["batch_size"], est["seq_length"]
    shape = f"{batch} × {length} tokens" + (" × 2 (chosen and rejected)" if cfg.objective == "dpo" else "")
    per = f" for each of {procs} processes" if procs > 1 else ""
    lower, other = [], []
    if batch > 1:
        now = (f"now {cfg.train.batch_size}" if batch == cfg.train.batch_size
               else f"{cfg.train.batch_size}, of which {batch} {'pairs' if cfg.objective == 'dpo' else 'rows'} "
                    f"fit in a batch")
        lower.append(f"train.batch_size ({now})")
    if length > 16:
        lower.append(f"train.max_length (now {cfg.train.max_length}" +
                     (f"; the longest row is {length} tokens)" if length < cfg.train.max_length else ")"))
    if not cfg.train.gradient_checkpointing:
        other.append("turn on train.gradient_checkpointing")
    if cfg.weights != "qlora":
        smaller = "lora or qlora" if cfg.weights == "full" else "qlora"
        other.append(f"set {cfg.method}.adapter to {smaller}" if cfg.adapter else f"use {smaller}")
    ways = (["lower " + " or ".join(lower)] if lower else []) + other
    fix = ("To fit, " + (", ".join(ways[:-1]) + ", or " if len(ways) > 1 else "") + ways[-1] + "."
           if ways else "The model itself is too large for this machine: choose a smaller one.")
    return (f"Not enough memory to start this run: it needs about {gb(need)} at its peak (estimate{per}, "
            f"batch {shape}), and {gb(free)} is {what}. {fix}")


def gb(mb: float) -> str:
    """Megabytes as a person reads them: "1.5 GB" from a gigabyte up, "900 MB" below."""
    return f"{mb / 1024:,.1f} GB" if mb >= 1024 else f"{mb:,.0f} MB"
