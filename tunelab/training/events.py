"""The event records of a run, and their reader.

A run appends one JSON object a line to `runs/<id>/events.jsonl`; every client
(the CLI's progress bar, the app's charts, notebooks, tests) reads the same file or
receives the same dicts through `on_event`. Each record has `type` and `time` (unix
seconds); the types and their main fields:

    start    run_id, method, model, max_steps, trainable_params, total_params, device, precision
    step     step, max_steps, loss, lr, grad_norm, tokens_per_s, elapsed_s, eta_s
             (DPO adds rewards_chosen, rewards_rejected, margin, accuracy, logps_chosen, logps_rejected;
             KTO rewards_chosen (desirable), rewards_rejected (undesirable), margin, kl; ORPO adds
             nll_loss, log_odds_ratio, log_odds_chosen to DPO's)
    eval     step, eval_loss (DPO adds eval_margin, eval_accuracy)
    save     step, path
    resume   step, checkpoint
    finish   status ("finished" | "stopped" | "cancelled": stopped before its first step,
             with a `note` and no summary), summary
    fail     error, step

The writer flushes every line, so a reader tailing the file sees each event as soon
as it is logged, and a crash loses at most the line being written; the reader skips
a torn last line instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator

EVENTS_FILE = "events.jsonl"

# TRL / transformers log keys -> our event field names.
_STEP_KEYS = {
    "loss": "loss",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/margins": "margin",
    "rewards/accuracies": "accuracy",
    "logps/chosen": "logps_chosen",
    "logps/rejected": "logps_rejected",
    "mean_token_accuracy": "token_accuracy",
    "num_tokens": "num_tokens",
    "kl": "kl",                            # KTO: the estimate of KL(policy || reference)
    "nll_loss": "nll_loss",                # ORPO: the SFT part of its loss
    "log_odds_ratio": "log_odds_ratio",    # ORPO: log σ(log odds chosen − log odds rejected)
    "log_odds_chosen": "log_odds_chosen",  # ORPO: log odds chosen − log odds rejected
}
_EVAL_KEYS = {
    "eval_loss": "eval_loss",
    "eval_rewards/margins": "eval_margin",
    "eval_rewards/accuracies": "eval_accuracy",
    "eval_rewards/chosen": "eval_rewards_chosen",
    "eval_rewards/rejected": "eval_rewards_rejected",
    "eval_mean_token_accuracy": "eval_token_accuracy",
    "eval_kl": "eval_kl",
    "eval_log_odds_chosen": "eval_log_odds_chosen",
}


def _clean(v):
    """JSON has no NaN/inf: write them as null so every reader can parse the line."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def map_log(logs: dict, keys: dict) -> dict:
    return {ours: _clean(float(logs[theirs])) for theirs, ours in keys.items() if theirs in logs}


def step_fields(logs: dict) -> dict:
    return map_log(logs, _STEP_KEYS)


def eval_fields(logs: dict) -> dict:
    return map_log(logs, _EVAL_KEYS)


class EventWriter:
    """Appends events to a run's events.jsonl and forwards each to `on_event`."""

    def __init__(self, run_dir: Path, on_event: Callable[[dict], None] | None = None):
        self.path = Path(run_dir) / EVENTS_FILE
        self.on_event = on_event
        torn = _ends_mid_line(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")
        if torn:  # a process killed mid-write left half a line: end it, so readers skip it whole
            self._fh.write("\n")

    def emit(self, type: str, **fields) -> dict:
        event = {"type": type, "time": time.time(), **{k: _clean(v) for k, v in fields.items()}}
        self._fh.write(json.dumps(event, default=str) + "\n")
        self._fh.flush()
        if type in ("finish", "fail"):
            os.fsync(self._fh.fileno())
        if self.on_event is not None:
            self.on_event(event)
        return event

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:  # missing or empty
        return False


def read_events(run_dir: str | Path) -> list[dict]:
    """All complete events of a run, oldest first (a torn last line is skipped)."""
    return list(iter_events(run_dir))


def iter_events(run_dir: str | Path) -> Iterator[dict]:
    yield from EventTail(run_dir).poll()


class EventTail:
    """Follows a growing events.jsonl: each `poll()` returns the events added since the last."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0

    def poll(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                self.offset += len(raw)
                try:
                    out.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        return out
