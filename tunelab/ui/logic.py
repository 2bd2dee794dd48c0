"""Helpers every tab of the app shares, without gradio.

Formatting numbers, sizes and durations; escaping text and messages for HTML; the
model picker (the default model, the choices, `check_model`, which refuses paths
outside the allowed folders); a run's folder by id and the "started / queued" line;
`flatten` for nested configs. Each tab's own logic sits beside it in
`<tab>_logic.py` (train, data, runs, arena), tested without a browser in
`tests/test_app_logic.py` and its siblings.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from ..modelio import hub, models
from ..service import settings
from ..common import workspace
from ..training.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_DATA_DIR = REPO_ROOT / "labs" / "data"

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


# --------------------------------------------------------------------------- models

def default_model() -> str:
    """TUNELAB_DEFAULT_MODEL (the browser tests point it at a tiny model), else the bundled one."""
    return os.environ.get("TUNELAB_DEFAULT_MODEL", "").strip() or models.DEFAULT_MODEL


# Small instruct models worth a try beside the bundled one, offered where the hub is reachable.
ONLINE_MODELS = ["HuggingFaceTB/SmolLM2-360M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                 "HuggingFaceTB/SmolLM2-1.7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"]


def model_choices(wait: float = 0.0) -> list[str]:
    """The default model, the bundled ones, and a few small hub models where the hub answers
    (tunelab/modelio/hub.py: asked in the background; `wait` seconds at most for its first answer)."""
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
    if models.bundled_key(name):
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
    if models.is_hub_id(name) and not name.startswith((".", "~")):
        return name
    raise ConfigError(f"model: {name!r} is neither a bundled model ({', '.join(models.BUNDLED_MODELS)}), "
                      f"an existing model folder nor a hub id like 'org/name'")


# --------------------------------------------------------------------------- runs

def user_of(request) -> str | None:
    """The signed-in user of a Gradio request (None when the app has no login)."""
    return getattr(request, "username", None) or None


def launched_text(run_id: str, place: tuple[int, int] | None) -> str:
    """What Start (or Train DPO) says: started, or its `place` in the queue as it is now
    (Jobs.queue_position)."""
    return queued_text(run_id, place) if place else started_text(run_id)


def started_text(run_id: str, waited: bool = False) -> str:
    """A run that has a training process (`waited`: it first waited in the queue)."""
    return f"Started {run_id}{' (its turn came)' if waited else ''}: the first steps come after the model loads."


def queued_text(run_id: str, place: tuple[int, int] | None) -> str:
    """A run waiting for a training slot, at `place` (jobs.queue_position as read for the
    page's other lines; None: it is leaving the line as the page looks)."""
    if not place:
        return f"Queued {run_id}: it starts when a training slot frees."
    return f"Queued {run_id}: {queue_line(place)}."


def queue_line(place: tuple[int, int]) -> str:
    return (f"{place[0]} of {place[1]} in line; it starts when a training slot frees "
            f"(this server trains {settings.max_trainings()} at a time)")


def run_dir(run_id: str | None) -> Path:
    """The folder of a run named by its id, and only by its id: the app never acts
    (export, resume, delete) on a path a client sends in."""
    from ..training.runfolder import RunError

    root = workspace.runs_dir()
    if not run_id or run_id != Path(run_id).name or run_id in (".", "..") or not (root / run_id).is_dir():
        raise RunError(f"no run named {run_id!r} in {root}")
    return root / run_id


# --------------------------------------------------------------------------- shared by several tabs

def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def clip(text: Any, n: int = 600) -> str:
    """`text` as a string cut to `n` characters, with an ellipsis where it was cut."""
    text = str(text)
    return text if len(text) <= n else text[:n] + "…"
