"""The Runs tab's logic without gradio: the runs table, a run's details, config diffs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..modelio import models
from ..training.config import iter_fields
from .logic import esc, flatten, fmt_duration, fmt_mb, fmt_num, message_html

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

def run_details_html(row: dict | None) -> str:
    """The selected run in a few lines: status, what it trained, its error."""
    if not row:
        return '<div class="tl-hint">Pick a run (or click a row of the table).</div>'
    st = row.get("status") or "unknown"
    bits = [f"{row.get('method')} · {_short(row.get('model'))} · {_short(row.get('data'))}",
            f"step {row.get('step') or 0} / {row.get('max_steps') or '?'}"]
    if row.get("loss") is not None:
        bits.append(f"loss {fmt_num(row['loss'])}")
    err = message_html(row.get("error"), "error") if st in ("failed", "interrupted") else ""
    resume = '<div class="tl-hint">Resumable from its last checkpoint.</div>' if row.get("resumable") else ""
    return (f'<div class="tl-run-details"><span class="tl-badge tl-{esc(st)}">{esc(st)}</span> '
            f'<b>{esc(row["run_id"])}</b><div class="tl-hint">{esc(" · ".join(bits))}</div>{err}{resume}</div>')


# --------------------------------------------------------------------------- config diff
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
