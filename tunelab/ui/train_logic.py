"""The Train tab's logic without gradio.

Turning widget values into a `RunConfig` (the model through `logic.check_model`, the
dataset through `data_logic.check_dataset`), the method panel, the dataset line under
the picker, the pre-run estimate, following a run's events into a progress bar, and
the command that trains the same config on a multi-GPU machine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from .. import data as data_mod
from ..common import workspace
from ..service import access
from ..training.config import DATA_KINDS, PREFERENCE_DATA, RunConfig, data_fits
from ..training.events import EVENTS_FILE, EventTail
from . import data_logic
from .logic import (LAB_DATA_DIR, TERMINAL, check_model, esc, fmt_count, fmt_duration, fmt_mb,
                    fmt_num, message_html, queue_line)

# What trains and what stays frozen, one line a method (from the article behind TuneLab).
METHOD_INFO = {
    "full": ("Full fine-tuning",
             "Every weight trains, nothing is frozen: the model re-learns from your lessons. "
             "The most specialised result and the most memory (weights, gradients and two AdamW "
             "moments for all of them)."),
    "lora": ("LoRA",
             "The base weights W stay frozen; two small matrices A and B train, so "
             "W′ = W + (α/r)·B·A. Usually a few % of the parameters, a fraction of the memory."),
    "qlora": ("QLoRA",
              "LoRA on a base compressed to 4-bit NF4 and frozen; only the adapters train. "
              "The least memory, a little slower per step."),
    "dpo": ("DPO",
            "Learns from “A is better than B” pairs: raises the chosen reply over the rejected one "
            "relative to a frozen reference (the base with adapters off). Trains LoRA adapters by "
            "default; needs prompt / chosen / rejected data."),
    "kto": ("KTO",
            "Learns from single answers marked good or bad (a thumbs up or down), no pairs needed: "
            "pushes good answers above the reference and bad ones below it. Needs prompt / "
            "completion / label data, or pairs (split into a good and a bad answer)."),
    "orpo": ("ORPO",
             "Learns from the same pairs as DPO with no reference model: SFT on the chosen reply "
             "plus a penalty when the rejected reply's odds come near it. No reference model is "
             "loaded or run."),
}


# --------------------------------------------------------------------------- methods

def method_html(method: str) -> str:
    title, text = METHOD_INFO.get(method, (method, ""))
    return f'<div class="tl-method"><b>{esc(title)}</b> — {esc(text)}</div>'


def visible_groups(method: str, adapter: str) -> dict[str, bool]:
    """Which settings groups a method needs: LoRA for adapters, QLoRA for a 4-bit base, and
    the feedback method's own (`adapter`: what that method trains, from its own section)."""
    weights = adapter if method in PREFERENCE_DATA else method
    return {"lora": weights in ("lora", "qlora"), "qlora": weights == "qlora",
            **{m: method == m for m in PREFERENCE_DATA}}

# --------------------------------------------------------------------------- the dataset picker

def dataset_line(path: str | None, method: str) -> str:
    """One line under the dataset picker: format, rows, and a warning when the method can't use it."""
    if not path:
        return message_html("No dataset chosen.", "warn")
    try:
        info = data_logic.dataset_info(path)
    except (OSError, data_mod.DataError) as e:
        return message_html(str(e), "error")
    text = f"{info['format']} format · {info['rows']} rows · {info['objective'].upper()} data"
    if not data_fits(method, info["objective"]):
        need = DATA_KINDS[PREFERENCE_DATA.get(method, "sft")]
        return message_html(f"{text} — method {method} needs {need}", "warn")
    return f'<div class="tl-hint">{esc(text)}</div>'


def pick_dataset(method: str, current: str | None, choices: list[tuple[str, str]]) -> str | None:
    """Keep the current dataset when the method can use it, else the first one that fits."""
    def fits(path):
        try:
            return data_fits(method, data_logic.dataset_info(path)["objective"])
        except (OSError, data_mod.DataError):
            return False
    if current and fits(current):
        return current
    return next((value for _, value in choices if fits(value)), current)

# --------------------------------------------------------------------------- widget values -> config

def config_from_values(values: dict[str, Any], check_data: bool = True) -> RunConfig:
    """Build and validate a RunConfig from {dotted field path: widget value}.

    Text boxes give strings and number boxes floats; the config's own coercion and
    validation name the field of any bad value. The model must pass `check_model`, the
    dataset `check_dataset` (skipped with check_data=False, for the estimate)."""
    d: dict = {}
    for path, v in values.items():
        if isinstance(v, str):
            v = v.strip()
        if path in ("name", "data.eval") and not v:
            v = None
        if path == "lora.target_modules" and isinstance(v, str) and v != "all-linear":
            v = [m.strip() for m in v.replace(";", ",").split(",") if m.strip()] or v
        target = d
        *parents, leaf = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = v
    cfg = RunConfig.from_dict(d).validate()
    cfg.model = check_model(cfg.model)
    if check_data:
        cfg.data.train = data_logic.check_dataset(cfg.data.train)
    return cfg

# --------------------------------------------------------------------------- the pre-run estimate

_PART_COLORS = ["#6366f1", "#22c55e", "#f59e0b", "#ec4899", "#06b6d4", "#94a3b8", "#a855f7", "#ef4444"]


def estimate_html(est: dict, fit_note: str | None = None, refused: str | None = None) -> str:
    """The 'before you start' panel: trainable parameters, peak memory and what makes it up;
    then what Start will do about the memory free now: `fit_note` (the batch will train as
    micro-batches) or `refused` (it will not start, and why)."""
    pct = est.get("trainable_pct")
    stats = (
        f'<div class="tl-stat"><div class="tl-stat-v">{fmt_count(est.get("trainable_params"))}</div>'
        f'<div class="tl-stat-l">trainable parameters<br>'
        f'{"—" if pct is None else f"{pct:.2f} %"} of {fmt_count(est.get("total_params"))}</div></div>'
        f'<div class="tl-stat"><div class="tl-stat-v">≈ {fmt_mb(est.get("peak_memory_mb"))}</div>'
        f'<div class="tl-stat-l">estimated peak memory</div></div>'
    )
    parts = {k: v for k, v in (est.get("breakdown") or {}).items() if v}
    total = sum(parts.values()) or 1.0
    bar = "".join(f'<span style="width:{100 * v / total:.2f}%;background:{_PART_COLORS[i % len(_PART_COLORS)]}" '
                  f'title="{esc(k)}: {fmt_mb(v)}"></span>' for i, (k, v) in enumerate(parts.items()))
    legend = "".join(f'<span><i style="background:{_PART_COLORS[i % len(_PART_COLORS)]}"></i>'
                     f'{esc(k)} {fmt_mb(v)}</span>' for i, (k, v) in enumerate(parts.items()))
    notes = "".join(f"<li>{esc(n)}</li>" for n in est.get("notes") or [])
    return (f'<div class="tl-est"><div class="tl-stats">{stats}</div>'
            + (f'<div class="tl-membar">{bar}</div><div class="tl-legend">{legend}</div>' if parts else "")
            + (f'<details class="tl-notes-box"><summary class="tl-hint">How this is estimated</summary>'
               f'<ul class="tl-notes">{notes}</ul></details>' if notes else "")
            + (message_html(f"At Start: {fit_note}", "info") if fit_note else "")
            + (message_html(refused, "warn") if refused else "") + "</div>")


# --------------------------------------------------------------------------- following a run

class EventCache:
    """Each run's events, read incrementally: a tick reads only the lines added since the last."""

    def __init__(self):
        self._runs: dict[str, tuple[EventTail, list]] = {}
        self._lock = threading.Lock()

    def events(self, run_dir: str | Path) -> list[dict]:
        key = str(run_dir)
        path = Path(run_dir) / EVENTS_FILE
        size = path.stat().st_size if path.exists() else 0
        with self._lock:
            entry = self._runs.get(key)
            if entry is None or size < entry[0].offset:  # new, or the file was replaced
                entry = self._runs[key] = (EventTail(run_dir), [])
            tail, events = entry
            events.extend(tail.poll())
            return list(events)

    def forget(self, run_dir: str | Path) -> None:
        with self._lock:
            self._runs.pop(str(run_dir), None)


def progress_state(events: list[dict], status: dict | None = None, now: float | None = None) -> dict:
    """Where a run is, from its events (and status.json, which knows about dead processes)."""
    now = time.time() if now is None else now
    status = status or {}
    begin = max((i for i, e in enumerate(events) if e.get("type") in ("start", "resume")), default=-1)
    current = events[begin:] if begin >= 0 else events  # a resumed run starts over here
    steps = [e for e in events if e.get("type") == "step"]
    last = steps[-1] if steps else {}
    evals = [e for e in events if e.get("type") == "eval" and e.get("eval_loss") is not None]
    end = next((e for e in reversed(current) if e.get("type") in ("finish", "fail")), None)
    state = status.get("status")
    if state in (None, "unknown"):
        state = (end.get("status", "finished") if end and end["type"] == "finish" else
                 "failed" if end else "running" if begin >= 0 else "starting")
    start_ev = events[begin] if begin >= 0 else {}
    max_steps = last.get("max_steps") or status.get("max_steps") or start_ev.get("max_steps")
    step = last.get("step", status.get("step") or 0)
    now_steps = [e for e in current if e.get("type") == "step"]
    elapsed = last.get("elapsed_s")
    eta = now_steps[-1].get("eta_s") if now_steps else None  # a resumed run has no ETA until its first step
    tokens_per_s = last.get("tokens_per_s")
    if state == "running" and start_ev:
        elapsed = now - start_ev["time"]  # live, not only as of the last logged step
        if eta is not None and last:
            eta = max(0.0, eta - (now - last["time"]))
    elif state in TERMINAL:
        eta = None
        summary = status.get("summary") or (end or {}).get("summary") or {}
        # Ended: what the live counter counted (start to end, final eval and save included),
        # so the figure does not jump back; and the run's mean speed, not its last step's.
        ended = (end or {}).get("time") or status.get("finished")
        live = ended - start_ev["time"] if start_ev and ended and ended >= start_ev["time"] else None
        elapsed = live if live is not None else summary.get("wall_time_s", elapsed)
        tokens_per_s = summary.get("tokens_per_s") or tokens_per_s
    error = status.get("error") or (end or {}).get("error") if state in ("failed", "interrupted") else None
    return {
        "state": state, "step": step, "max_steps": max_steps,
        "pct": min(100.0, 100.0 * step / max_steps) if max_steps else 0.0,
        "elapsed_s": elapsed, "eta_s": eta, "loss": last.get("loss"),
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "tokens_per_s": tokens_per_s, "error": error,
        "done": state in TERMINAL, "queue": status.get("queue"),
        "note": (status.get("note") or (end or {}).get("note")) if state == "cancelled" else None,
        # Who pressed Stop (jobs.stop records it): a name, "someone using the app" or "the host (CLI)".
        "stopped_by": (status.get("stopped_by") or None) if state in ("stopped", "cancelled") else None,
    }

def stop_control(ps: dict, status: dict, user: str | None) -> tuple[bool, str]:
    """(Stop enabled, the line beside it) for `user` following a run (`ps` from progress_state,
    `status` its status.json). With logins on, a run's Stop is its owner's and the admins';
    others see whose run it is. Without logins (user None) anyone here may stop any run."""
    if ps["done"]:
        return False, ""
    if access.may_change(status, user):
        return True, ""
    return False, access.whose_line(status, user)


def multi_gpu_command(cfg: RunConfig, gpus: int = 8) -> str:
    """Shell lines that train `cfg` data-parallel on a GPU machine with a TuneLab checkout:
    the config written to a file, then `accelerate launch` with the shipped DDP config."""
    import yaml
    name = workspace.safe_name(cfg.name or f"tunelab-{cfg.method}")
    lines = ["# On the GPU machine, in a TuneLab checkout after `pip install -r requirements.txt`:"]
    for label, path in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if path and not Path(path).resolve().is_relative_to(LAB_DATA_DIR.resolve()):
            lines.append(f"# copy {path} there too, and point {label} at it")
    lines += [f"cat > {name}.yaml <<'EOF'", yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip(), "EOF",
              f"accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes {gpus} "
              f"-m tunelab train {name}.yaml",
              "# other ways to split the work (FSDP, DeepSpeed ZeRO-2/3): configs/accelerate/README.md"]
    return "\n".join(lines) + "\n"

def progress_text(ps: dict) -> str:
    """'step 12 / 200 · elapsed 0:34 · ETA 5:10 · loss 2.31' — the line under the bar."""
    parts = [f"step {ps['step']} / {ps['max_steps'] or '?'}"]
    if ps.get("elapsed_s") is not None:
        parts.append(f"elapsed {fmt_duration(ps['elapsed_s'])}")
    if ps.get("eta_s") is not None:
        parts.append(f"ETA {fmt_duration(ps['eta_s'])}")
    if ps.get("loss") is not None:
        parts.append(f"loss {fmt_num(ps['loss'])}")
    if ps.get("eval_loss") is not None:
        parts.append(f"eval loss {fmt_num(ps['eval_loss'])}")
    if ps.get("tokens_per_s"):
        parts.append(f"{ps['tokens_per_s']:,.0f} tokens/s")
    return " · ".join(parts)


_STATE_LINE = {
    "queued": "Queued: it starts when a training slot frees",
    "cancelled": "Cancelled before it started",
    "starting": "Starting: loading the model and data…",
    "running": "Training",
    "finished": "Finished",
    "stopped": "Stopped — the model so far is saved; resume it from the Runs tab",
    "failed": "Failed",
    "interrupted": "Interrupted — the training process ended without finishing",
}


def state_line(ps: dict) -> str:
    """The run's state in words: a cancelled run says when the stop came, a stopped or
    cancelled one who stopped it."""
    line = ps.get("note") or _STATE_LINE.get(ps["state"], ps["state"])
    if ps.get("stopped_by"):
        line += f" (stopped by {ps['stopped_by']})"
    return line


def ended_line(ps: dict) -> str:
    """How a run ended, in one line (what a Stop came to, in place of "Stopping…")."""
    line = state_line(ps)
    return f"{line}: {ps['error']}" if ps.get("error") else line


def progress_html(ps: dict | None, run_id: str | None = None) -> str:
    if not ps:
        return ('<div class="tl-progress tl-empty">No run yet. Pick a method, a model and a dataset, '
                'then press <b>Start training</b>.</div>')
    state = ps["state"]
    err = message_html(ps.get("error"), "error")
    line = state_line(ps)
    if state == "queued" and ps.get("queue"):
        line = f"Queued: {queue_line(ps['queue'])}. Stop cancels it."
    return (f'<div class="tl-progress" data-state="{esc(state)}">'
            f'<div class="tl-progress-head"><span class="tl-badge tl-{esc(state)}">{esc(state)}</span>'
            f'<span class="tl-run">{esc(run_id or "")}</span>'
            f'<span class="tl-state-line">{esc(line)}</span></div>'
            f'<div class="tl-bar"><div class="tl-bar-fill tl-fill-{esc(state)}" style="width:{ps["pct"]:.1f}%">'
            f'</div></div><div class="tl-progress-meta">{esc(progress_text(ps))}</div>{err}</div>')
