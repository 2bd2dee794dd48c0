"""The app's plain logic: everything the tabs show that can be computed without gradio.

Turning widget values into a `RunConfig` (and refusing model paths outside the allowed
folders), formatting the pre-run estimate, following a run's events into a progress
line, the runs table, config diffs, dataset previews and uploads. Each
function takes plain values and returns plain values or HTML strings, so
`tests/test_app_logic.py` checks them without a browser.
"""

from __future__ import annotations

import filecmp
import html
import os
import re
import shutil
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from .. import data as data_mod
from .. import hub, models, settings, workspace
from ..config import ConfigError, RunConfig, iter_fields
from ..events import EVENTS_FILE, EventTail

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_DATA_DIR = REPO_ROOT / "labs" / "data"

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
}

TERMINAL = ("finished", "stopped", "failed", "interrupted", "cancelled")
LIVE = ("queued", "starting", "running")   # a run in these may not be resumed or deleted


# --------------------------------------------------------------------------- formatting

def fmt_count(n: float | None) -> str:
    """4886016 -> '4.89 M'."""
    if n is None:
        return "—"
    n = float(n)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}"
    return f"{n:.0f}"


def fmt_mb(mb: float | None) -> str:
    if mb is None:
        return "—"
    if mb < 0.1:
        return f"{mb * 1024:.0f} KB"
    if mb < 10:
        return f"{mb:.1f} MB"
    return f"{mb:.0f} MB" if mb < 1024 else f"{mb / 1024:.2f} GB"


def fmt_duration(s: float | None) -> str:
    """Seconds as m:ss or h:mm:ss."""
    if s is None:
        return "—"
    s = int(round(max(float(s), 0.0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_num(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


_CODE = re.compile(r"`([^`\n]+)`")


def esc_msg(text: Any) -> str:
    """A message for HTML: escaped, with `code` spans (the core's errors quote paths and
    commands that way, as a terminal reader expects) shown as code, not as backticks."""
    return _CODE.sub(r"<code>\1</code>", esc(text))


def message_html(text: str, kind: str = "info") -> str:
    """A one-line notice: kind is info, ok, warn or error."""
    if not text:
        return ""
    return f'<div class="tl-msg tl-msg-{kind}">{esc_msg(text)}</div>'


# --------------------------------------------------------------------------- methods

def method_html(method: str) -> str:
    title, text = METHOD_INFO.get(method, (method, ""))
    return f'<div class="tl-method"><b>{esc(title)}</b> — {esc(text)}</div>'


def visible_groups(method: str, adapter: str) -> dict[str, bool]:
    """Which settings groups a method needs: LoRA for adapters, QLoRA for a 4-bit base, DPO."""
    weights = adapter if method == "dpo" else method
    return {"lora": weights in ("lora", "qlora"), "qlora": weights == "qlora", "dpo": method == "dpo"}


# --------------------------------------------------------------------------- models

def default_model() -> str:
    """TUNELAB_DEFAULT_MODEL (the browser tests point it at a tiny model), else the bundled one."""
    return os.environ.get("TUNELAB_DEFAULT_MODEL", "").strip() or models.DEFAULT_MODEL


# Small instruct models worth a try beside the bundled one, offered where the hub is reachable.
ONLINE_MODELS = ["HuggingFaceTB/SmolLM2-360M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                 "HuggingFaceTB/SmolLM2-1.7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"]


def model_choices(wait: float = 0.0) -> list[str]:
    """The default model, the bundled ones, and a few small hub models where the hub answers
    (tunelab/hub.py: asked in the background; `wait` seconds at most for its first answer)."""
    out = [default_model()]
    out += [m for m in models.BUNDLED_MODELS if m not in out]
    if hub.reachable(wait=wait):
        out += [m for m in ONLINE_MODELS if m not in out]
    return out


def allowed_model_roots() -> list[Path]:
    """Folders a model path typed into the app may point into: the workspace, the
    folders in TUNELAB_MODEL_DIRS (os.pathsep-separated) and the default model's folder."""
    roots = [workspace.home()]
    for p in os.environ.get("TUNELAB_MODEL_DIRS", "").split(os.pathsep):
        if p.strip():
            roots.append(Path(p.strip()).expanduser().resolve())
    d = Path(default_model()).expanduser()
    if d.is_dir():
        roots.append(d.resolve())
    return roots


def check_model(name: str | None) -> str:
    """The model value to put in a config, or ConfigError("model: ...").

    Bundled names and hub ids `org/name` pass; a path must exist and resolve (symlinks
    followed) inside one of `allowed_model_roots()` — someone using the app must not be
    able to make the server load any folder on its disk."""
    name = (name or "").strip()
    if not name:
        raise ConfigError(f"model: choose a model ({default_model()} is the default)")
    if models._bundled_key(name):
        return name
    path = Path(name).expanduser()
    # "org/name" is a hub id; a name that starts like a path, or has more slashes, is a folder.
    if path.exists() or name.startswith((".", "/", "~", "\\")) or name.count("/") > 1:
        real = path.resolve()
        roots = allowed_model_roots()
        # Judged before existence, so the page cannot be used to probe the server's disk.
        if not any(real == r or r in real.parents for r in roots):
            raise ConfigError(f"model: {name} is outside the folders this app may load models from "
                              f"({', '.join(str(r) for r in roots)}); add its folder to TUNELAB_MODEL_DIRS")
        if not real.exists():
            raise ConfigError(f"model: no model folder at {name}")
        try:
            models.resolve_model(str(real))
        except models.ModelError as e:
            raise ConfigError(f"model: {e}") from None
        return str(real)
    if models._is_hub_id(name) and not name.startswith((".", "~")):
        return name
    raise ConfigError(f"model: {name!r} is neither a bundled model ({', '.join(models.BUNDLED_MODELS)}), "
                      f"an existing model folder nor a hub id like 'org/name'")


# --------------------------------------------------------------------------- datasets

def _shown_path(p: Path) -> str:
    """Paths in configs read best relative to where the app runs (the repository root)."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def dataset_files() -> list[tuple[Path, str]]:
    """(path, 'lab' | 'uploaded') for every usable data file, lab data first."""
    out = []
    for root, kind in ((LAB_DATA_DIR, "lab"), (workspace.data_dir(), "uploaded")):
        if root.is_dir():
            out += [(p, kind) for p in sorted(root.iterdir())
                    if p.is_file() and p.suffix.lower() in data_mod.EXTENSIONS]
    return out


def dataset_choices() -> list[tuple[str, str]]:
    """Dropdown choices: (label, path as the config stores it)."""
    return [(f"{p.name} · {kind}", _shown_path(p)) for p, kind in dataset_files()]


def check_dataset(path: str | None) -> str:
    """Only files under labs/data or the workspace's data folder may be trained on from the app."""
    if not path:
        raise ConfigError("data.train: choose a dataset (or upload one in the Data tab)")
    p = Path(path).expanduser().resolve()
    roots = [LAB_DATA_DIR.resolve(), workspace.data_dir().resolve()]
    if not any(r in p.parents for r in roots):
        raise ConfigError(f"data.train: {path} is not a lab dataset or an uploaded one")
    if not p.is_file():
        raise ConfigError(f"data.train: {path} does not exist (was it deleted?)")
    return path


def dataset_info(path: str) -> dict:
    """summarize() of a file, cached on its size and modification time."""
    p = Path(path)
    st = p.stat()
    return _summary(str(p.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _summary(path: str, mtime_ns: int, size: int) -> dict:
    return data_mod.summarize(path)


def dataset_line(path: str | None, method: str) -> str:
    """One line under the dataset picker: format, rows, and a warning when the method can't use it."""
    if not path:
        return message_html("No dataset chosen.", "warn")
    try:
        info = dataset_info(path)
    except (OSError, data_mod.DataError) as e:
        return message_html(str(e), "error")
    text = f"{info['format']} format · {info['rows']} rows · {info['objective'].upper()} data"
    want = "dpo" if method == "dpo" else "sft"
    if info["objective"] != want:
        need = "preference pairs (prompt / chosen / rejected)" if want == "dpo" else "SFT examples"
        return message_html(f"{text} — method {method} needs {need}", "warn")
    return f'<div class="tl-hint">{esc(text)}</div>'


def pick_dataset(method: str, current: str | None, choices: list[tuple[str, str]]) -> str | None:
    """Keep the current dataset when the method can use it, else the first one that fits."""
    want = "dpo" if method == "dpo" else "sft"

    def fits(path):
        try:
            return dataset_info(path)["objective"] == want
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
        cfg.data.train = check_dataset(cfg.data.train)
    return cfg


# --------------------------------------------------------------------------- the pre-run estimate

_PART_COLORS = ["#6366f1", "#22c55e", "#f59e0b", "#ec4899", "#06b6d4", "#94a3b8", "#a855f7", "#ef4444"]


def estimate_html(est: dict) -> str:
    """The 'before you start' panel: trainable parameters, peak memory and what makes it up."""
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
               f'<ul class="tl-notes">{notes}</ul></details>' if notes else "") + "</div>")


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
    }


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


def user_of(request) -> str | None:
    """The signed-in user of a Gradio request (None when the app has no login)."""
    return getattr(request, "username", None) or None


def launched_text(run_id: str) -> str:
    """What Start (or Train DPO) says: started, or its place in the queue."""
    from .. import jobs
    place = jobs.queue_position(run_id)
    if place:
        return f"Queued {run_id}: {queue_line(place)}."
    return f"Started {run_id}: the first steps come after the model loads."


def queue_line(place: tuple[int, int]) -> str:
    return (f"{place[0]} of {place[1]} in line; it starts when a training slot frees "
            f"(this server trains {settings.max_trainings()} at a time)")


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


def ended_line(ps: dict) -> str:
    """How a run ended, in one line (what a Stop came to, in place of "Stopping…")."""
    line = ps.get("note") or _STATE_LINE.get(ps["state"], ps["state"])
    return f"{line}: {ps['error']}" if ps.get("error") else line


def progress_html(ps: dict | None, run_id: str | None = None) -> str:
    if not ps:
        return ('<div class="tl-progress tl-empty">No run yet. Pick a method, a model and a dataset, '
                'then press <b>Start training</b>.</div>')
    state = ps["state"]
    err = f'<div class="tl-msg tl-msg-error">{esc_msg(ps["error"])}</div>' if ps.get("error") else ""
    line = ps.get("note") or _STATE_LINE.get(state, state)   # a cancelled run says when the stop came
    if state == "queued" and ps.get("queue"):
        line = f"Queued: {queue_line(ps['queue'])}. Stop cancels it."
    return (f'<div class="tl-progress" data-state="{esc(state)}">'
            f'<div class="tl-progress-head"><span class="tl-badge tl-{esc(state)}">{esc(state)}</span>'
            f'<span class="tl-run">{esc(run_id or "")}</span>'
            f'<span class="tl-state-line">{esc(line)}</span></div>'
            f'<div class="tl-bar"><div class="tl-bar-fill tl-fill-{esc(state)}" style="width:{ps["pct"]:.1f}%">'
            f'</div></div><div class="tl-progress-meta">{esc(progress_text(ps))}</div>{err}</div>')


# --------------------------------------------------------------------------- runs table

# Short headers: the table is wide. trainable = % of the parameters, time = training wall time.
RUN_COLUMNS = ["run", "status", "method", "model", "data", "trainable", "steps", "time", "tok/s", "peak mem",
               "loss", "eval loss"]
# status gets room for its longest word ("interrupted", 11 monospace characters, ~106 px with
# the cell's padding): at 8% of the table (97 px at 1400 px) Gradio broke it mid-word.
RUN_COLUMN_WIDTHS = ["14%", "10%", "6%", "9%", "13%", "8%", "8%", "6%", "6%", "7%", "6%", "7%"]


def _short(path: str | None) -> str:
    if not path:
        return "—"
    return Path(path).name if ("/" in path or os.sep in path) and not models._is_hub_id(path) else path


def runs_table(rows: list[dict]) -> pd.DataFrame:
    """runs.list_runs() rows as the table people read (formatted text, newest first)."""
    out = []
    for r in rows:
        pct = r.get("trainable_pct")
        out.append({
            "run": r["run_id"], "status": r.get("status") or "—", "method": r.get("method") or "—",
            "model": _short(r.get("model")), "data": _short(r.get("data")),
            "trainable": "—" if pct is None else f"{pct:.2f} %",
            "steps": f"{r.get('step') or 0} / {r.get('max_steps') or '?'}",
            "time": fmt_duration(r.get("wall_time_s")),
            "tok/s": "—" if not r.get("tokens_per_s") else f"{r['tokens_per_s']:,.0f}",
            "peak mem": fmt_mb(r.get("peak_memory_mb")),
            "loss": fmt_num(r.get("loss")), "eval loss": fmt_num(r.get("eval_loss")),
        })
    return pd.DataFrame(out, columns=RUN_COLUMNS)


def run_dir(run_id: str | None) -> Path:
    """The folder of a run named by its id, and only by its id: the app never acts
    (export, resume, delete) on a path a client sends in."""
    from ..run import RunError

    root = workspace.runs_dir()
    if not run_id or run_id != Path(run_id).name or run_id in (".", "..") or not (root / run_id).is_dir():
        raise RunError(f"no run named {run_id!r} in {root}")
    return root / run_id


def run_details_html(row: dict | None) -> str:
    """The selected run in a few lines: status, what it trained, its error."""
    if not row:
        return '<div class="tl-hint">Pick a run (or click a row of the table).</div>'
    st = row.get("status") or "unknown"
    bits = [f"{row.get('method')} · {_short(row.get('model'))} · {_short(row.get('data'))}",
            f"step {row.get('step') or 0} / {row.get('max_steps') or '?'}"]
    if row.get("loss") is not None:
        bits.append(f"loss {fmt_num(row['loss'])}")
    err = f'<div class="tl-msg tl-msg-error">{esc_msg(row["error"])}</div>' \
        if row.get("error") and st in ("failed", "interrupted") else ""
    resume = '<div class="tl-hint">Resumable from its last checkpoint.</div>' if row.get("resumable") else ""
    return (f'<div class="tl-run-details"><span class="tl-badge tl-{esc(st)}">{esc(st)}</span> '
            f'<b>{esc(row["run_id"])}</b><div class="tl-hint">{esc(" · ".join(bits))}</div>{err}{resume}</div>')


# --------------------------------------------------------------------------- config diff

def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def config_diff(configs: dict[str, dict]) -> pd.DataFrame:
    """Fields down, runs across, plus `differs`; every field of the config schema, in its order."""
    flat = {run: flatten(c) for run, c in configs.items()}
    fields = [p for p, _, _ in iter_fields()]
    extra = sorted({k for f in flat.values() for k in f} - set(fields))
    rows = []
    for field in fields + extra:
        cells = [_cell(flat[run].get(field)) for run in flat]
        rows.append([field, *cells, len(set(cells)) > 1])
    return pd.DataFrame(rows, columns=["field", *flat, "differs"])


def config_diff_html(df: pd.DataFrame, only_differences: bool = False) -> str:
    if df.empty or len(df.columns) <= 2:
        return '<div class="tl-hint">Select runs to compare their configs.</div>'
    runs = list(df.columns[1:-1])
    if only_differences:
        df = df[df["differs"]]
    head = "".join(f"<th>{esc(r)}</th>" for r in runs)
    body = "".join(
        f'<tr class="{"tl-diff" if row["differs"] else ""}"><td class="tl-field">{esc(row["field"])}</td>'
        + "".join(f"<td>{esc(row[r])}</td>" for r in runs) + "</tr>"
        for _, row in df.iterrows())
    n = int(df["differs"].sum())
    note = (f"{n} field{'s' if n != 1 else ''} differ{'s' if n == 1 else ''} (highlighted)" if len(runs) > 1
            else "One run selected: its whole config. Select more to compare.")
    return (f'<div class="tl-diffwrap"><div class="tl-hint">{note}</div>'
            f'<table class="tl-difftable"><thead><tr><th>field</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


# --------------------------------------------------------------------------- dataset preview

def _clip(text: Any, n: int = 600) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n] + "…"


def _bubbles(messages: list[dict], extra_class: str = "") -> str:
    return "".join(f'<div class="tl-turn tl-{esc(m.get("role", "user"))} {extra_class}">'
                   f'<span class="tl-role">{esc(m.get("role", ""))}</span>{esc(_clip(m.get("content", "")))}</div>'
                   for m in messages)


def preview_html(examples: list[dict], objective: str) -> str:
    """The first examples as a conversation (SFT) or as prompt / chosen / rejected (DPO)."""
    cards = []
    for i, ex in enumerate(examples, 1):
        if objective == "dpo":
            body = (_bubbles(ex.get("prompt") or [])
                    + '<div class="tl-pair"><div class="tl-chosen"><div class="tl-pair-h">✓ chosen</div>'
                    + _bubbles(ex.get("chosen") or []) + '</div><div class="tl-rejected">'
                    + '<div class="tl-pair-h">✗ rejected</div>' + _bubbles(ex.get("rejected") or [])
                    + "</div></div>")
        else:
            body = _bubbles(ex.get("prompt") or []) + _bubbles(ex.get("completion") or [], "tl-trained")
        cards.append(f'<div class="tl-example"><div class="tl-example-h">example {i}</div>{body}</div>')
    return '<div class="tl-preview">' + "".join(cards) + "</div>" if cards else ""


def summary_html(info: dict, saved_as: str | None = None, reused: bool = False) -> str:
    """Rows, format and what the file is for, plus where it was saved."""
    use = "DPO" if info["objective"] == "dpo" else "full / LoRA / QLoRA (SFT)"
    saved = ""
    if saved_as:
        verb = "Already saved as" if reused else "Saved as"
        # What the Train tab does with the file is the Data tab's to say (see ui/notes.py).
        saved = f'<div class="tl-msg tl-msg-ok">{verb} {esc(saved_as)}.</div>'
    return (f'{saved}<div class="tl-stats">'
            f'<div class="tl-stat"><div class="tl-stat-v">{info["rows"]:,}</div><div class="tl-stat-l">rows</div></div>'
            f'<div class="tl-stat"><div class="tl-stat-v">{esc(info["format"])}</div>'
            f'<div class="tl-stat-l">format</div></div>'
            f'<div class="tl-stat"><div class="tl-stat-v">{esc(info["objective"].upper())}</div>'
            f'<div class="tl-stat-l">for {esc(use)}</div></div></div>')


def token_lengths(examples: list[dict], tokenizer, objective: str, limit: int = 2000) -> dict[str, list[int]]:
    """Tokens per example through the model's chat template (what training sees before truncation).
    DPO pairs give two series: prompt + chosen and prompt + rejected."""
    def count(messages):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    examples = examples[:limit]
    if objective == "dpo":
        return {"chosen": [count(ex["prompt"] + ex["chosen"]) for ex in examples],
                "rejected": [count(ex["prompt"] + ex["rejected"]) for ex in examples]}
    return {"examples": [count(ex["prompt"] + ex["completion"]) for ex in examples]}


def length_histogram(lengths: dict[str, list[int]], max_length: int | None = None):
    """A plotly histogram of token lengths with train.max_length marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = {"examples": "#6366f1", "chosen": "#22c55e", "rejected": "#ef4444"}
    longest = max((v for vals in lengths.values() for v in vals), default=0)
    width = max(1, -(-longest // 30))  # about 30 whole-token bins from 0
    for name, values in lengths.items():
        fig.add_trace(go.Histogram(x=values, name=name, opacity=0.75, marker_color=colors.get(name),
                                   xbins=dict(start=0, end=longest + width, size=width)))
    title = f"{max((len(v) for v in lengths.values()), default=0)} examples, longest {longest} tokens"
    if max_length:
        over = max((sum(v > max_length for v in vals) for vals in lengths.values()), default=0)
        title += (f" · {over} longer than max_length {max_length}: truncated" if over
                  else f" · all fit max_length {max_length}")
        if max_length <= 1.5 * longest:  # mark the cut only where it is near the data
            fig.add_vline(x=max_length, line_dash="dash", line_color="#f59e0b",
                          annotation_text=f"max_length {max_length}", annotation_position="top right")
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), barmode="overlay", height=280,
                      margin=dict(l=50, r=20, t=45, b=40), xaxis_title="tokens (chat template applied)",
                      yaxis_title="examples", template="plotly_white", bargap=0.05,
                      xaxis=dict(rangemode="tozero", tickformat="d"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
                      showlegend=len(lengths) > 1)
    return fig


# --------------------------------------------------------------------------- uploads

def save_upload(src: str | Path, original_name: str | None = None, dest_dir: Path | None = None,
                max_bytes: int | None = None) -> tuple[Path, bool]:
    """Copy an uploaded file into the workspace data folder under a safe name.

    Returns (path, reused): a file with the same name and the same bytes is reused; a
    different file with the same name gets a -2, -3... suffix instead of being overwritten."""
    src = Path(src)
    name = Path(original_name or src.name).name
    limit = data_mod.MAX_FILE_BYTES if max_bytes is None else max_bytes
    size = src.stat().st_size
    if size > limit:
        raise data_mod.DataError(f"{name}: {fmt_mb(size / 2**20)} is over the upload limit of "
                                 f"{fmt_mb(limit / 2**20)}")
    suffix = Path(name).suffix.lower()
    if suffix not in data_mod.EXTENSIONS:
        raise data_mod.DataError(f"{name}: unsupported file type; use {', '.join(data_mod.EXTENSIONS)}")
    try:
        stem = workspace.safe_name(Path(name).stem)
    except ValueError:
        stem = "dataset"
    dest_dir = Path(dest_dir) if dest_dir is not None else workspace.data_dir()
    n = 1
    while True:
        dest = workspace.inside(dest_dir, f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            return dest, False
        if filecmp.cmp(src, dest, shallow=False):
            return dest, True
        n += 1


def ingest_upload(src: str | Path, dest_dir: Path | None = None) -> tuple[dict, Path, bool]:
    """Validate an uploaded file with the core's checks, then save it: (summary, path, reused).
    Errors name the file as the user knows it, not the server's temporary path."""
    src = Path(src)
    name = src.name
    limit = data_mod.MAX_FILE_BYTES
    if src.stat().st_size > limit:
        raise data_mod.DataError(f"{name}: {fmt_mb(src.stat().st_size / 2**20)} is over the upload limit "
                                 f"of {fmt_mb(limit / 2**20)}")
    try:
        info = data_mod.summarize(src)
    except data_mod.DataError as e:
        raise data_mod.DataError(str(e).replace(str(src), name)) from None
    dest, reused = save_upload(src, name, dest_dir)
    return {**info, "path": _shown_path(dest), "saved_as": _in_workspace(dest)}, dest, reused


def _in_workspace(p: Path) -> str:
    """Where a saved file really is: relative to the folder the app runs in when the workspace
    is inside it (the default ./workspace), else its absolute path (TUNELAB_HOME elsewhere)."""
    return _shown_path(p.resolve())


# --------------------------------------------------------------------------- exports

def export_dir() -> Path:
    """A temporary folder for small downloads (the Arena's label files). A run's model is
    served from Gradio's own folder instead, without copies: see exports.py."""
    d = Path(tempfile.gettempdir()) / "tunelab-exports"
    d.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in d.iterdir():  # downloads are copied by the app at once; an hour is plenty
        if now - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return d
