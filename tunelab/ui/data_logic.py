"""The Data tab's logic without gradio.

Which dataset files the app offers (lab data and uploads) and may train on, their
cached summaries, the preview of the first examples, token-length histograms, and
saving an upload into the workspace under a safe name.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from functools import lru_cache
from pathlib import Path

from .. import data as data_mod
from ..common import workspace
from ..training.config import ConfigError
from .logic import LAB_DATA_DIR, clip, esc, fmt_mb

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

# --------------------------------------------------------------------------- dataset preview

def _bubbles(messages: list[dict], extra_class: str = "") -> str:
    return "".join(f'<div class="tl-turn tl-{esc(m.get("role", "user"))} {extra_class}">'
                   f'<span class="tl-role">{esc(m.get("role", ""))}</span>{esc(clip(m.get("content", "")))}</div>'
                   for m in messages)


def preview_html(examples: list[dict], objective: str) -> str:
    """The first examples as a conversation (SFT), as prompt / chosen / rejected (pairs), or
    as a conversation whose answer is marked good or bad (KTO)."""
    cards = []
    for i, ex in enumerate(examples, 1):
        if objective == "dpo":
            body = (_bubbles(ex.get("prompt") or [])
                    + '<div class="tl-pair"><div class="tl-chosen"><div class="tl-pair-h">✓ chosen</div>'
                    + _bubbles(ex.get("chosen") or []) + '</div><div class="tl-rejected">'
                    + '<div class="tl-pair-h">✗ rejected</div>' + _bubbles(ex.get("rejected") or [])
                    + "</div></div>")
        elif "label" in ex:
            good = bool(ex["label"])
            body = (_bubbles(ex.get("prompt") or []) + f'<div class="{"tl-chosen" if good else "tl-rejected"}">'
                    f'<div class="tl-pair-h">{"👍 desirable" if good else "👎 undesirable"}</div>'
                    + _bubbles(ex.get("completion") or []) + "</div>")
        else:
            body = _bubbles(ex.get("prompt") or []) + _bubbles(ex.get("completion") or [], "tl-trained")
        cards.append(f'<div class="tl-example"><div class="tl-example-h">example {i}</div>{body}</div>')
    return '<div class="tl-preview">' + "".join(cards) + "</div>" if cards else ""


def summary_html(info: dict, saved_as: str | None = None, reused: bool = False) -> str:
    """Rows, format and what the file is for, plus where it was saved."""
    use = {"dpo": "DPO / ORPO / KTO", "kto": "KTO"}.get(info["objective"], "full / LoRA / QLoRA (SFT)")
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
    limit = data_mod.files.MAX_FILE_BYTES if max_bytes is None else max_bytes
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
    limit = data_mod.files.MAX_FILE_BYTES
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
