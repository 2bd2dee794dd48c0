"""Methods side by side: what each run trained, stored and cost, and where its loss ended.

    table = compare_methods(["<full run>", "<lora run>", "<qlora run>"])
    compare_display(table)   # "2.44 M" parameters, "3,953 MB", "2.5 min"
    compare_figure(table)    # four bar charts: parameters, size, peak memory, minutes
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from . import charts
from ..training import runs
from ..training.config import RunConfig
from ..training.runfolder import SUMMARY_FILE, read_json

COMPARE_COLUMNS = ["run", "method", "trainable params", "trainable %", "saved MB", "peak memory MB", "minutes",
                   "final loss"]


def compare_methods(run_ids: list[str]) -> pd.DataFrame:
    """One row per run: what trained, what was stored, what it cost, where the loss ended."""
    rows = []
    for ref in run_ids:
        d = runs.find_run(ref)
        s = read_json(d / SUMMARY_FILE)
        cfg = RunConfig.from_yaml(d / "config.yaml")
        method = f"{cfg.method} ({cfg.adapter})" if cfg.adapter else cfg.method
        rows.append({"run": d.name, "method": method, "trainable params": s.get("trainable_params"),
                     "trainable %": s.get("trainable_pct"), "saved MB": s.get("output_size_mb"),
                     "peak memory MB": s.get("peak_memory_mb"),
                     "minutes": None if s.get("wall_time_s") is None else s["wall_time_s"] / 60,
                     "final loss": s.get("final_loss")})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


COMPARE_HINT = ("Pick two or more finished runs above to compare them, for instance your runs of labs 1 (full), "
                "2 (LoRA) and 3 (QLoRA). Only finished runs are listed: press ↻ Runs after one ends.")


def compare_display(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as people read it: "2.44 M" parameters, "3,953 MB", "2.5 min"."""
    def num(v, fmt):
        return "—" if v is None or pd.isna(v) else fmt.format(v)
    return pd.DataFrame({
        "run": table["run"], "method": table["method"],
        "trainable params": [charts.fmt_count(v) for v in table["trainable params"]],
        "trainable %": [num(v, "{:.2f} %") for v in table["trainable %"]],
        "saved": [charts.fmt_mb(v) for v in table["saved MB"]],
        "peak memory": [charts.fmt_mb(v) for v in table["peak memory MB"]],
        "time": [charts.fmt_minutes(v) for v in table["minutes"]],
        "final loss": [num(v, "{:.3f}") for v in table["final loss"]]})


def compare_figure(table: pd.DataFrame) -> go.Figure:
    """Four small bar charts side by side: trainable parameters (log), stored size, peak
    memory, minutes. One row a run, named in full once at the left (run ids are long: as
    x labels they were cut or turned on their side), each bar labelled with its value."""
    from plotly.subplots import make_subplots
    if table.empty:  # nothing picked yet: say what to pick instead of four empty frames
        fig = go.Figure()
        fig.add_annotation(text=COMPARE_HINT.replace(" for instance", "<br>for instance"), xref="paper",
                           yref="paper", x=0.5, y=0.5, showarrow=False, font=dict(size=13, color="#888"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig.update_layout(template="plotly_white", height=160, margin=dict(l=10, r=10, t=10, b=10))
    panels = [("trainable params", "trainable parameters", charts.fmt_count), ("saved MB", "saved", charts.fmt_mb),
              ("peak memory MB", "peak memory", charts.fmt_mb), ("minutes", "training time", charts.fmt_minutes)]
    fig = make_subplots(rows=1, cols=4, shared_yaxes=True, horizontal_spacing=0.035,
                        subplot_titles=[t for _, t, _ in panels])
    labels = [f"{r} · <b>{m}</b>" for m, r in zip(table["method"], table["run"])]
    for i, (col, title, fmt) in enumerate(panels, start=1):
        values = pd.to_numeric(table[col], errors="coerce")
        fig.add_trace(go.Bar(y=labels, x=values, orientation="h", marker_color=charts.COLORS[i - 1],
                             showlegend=False, text=[fmt(v) for v in values], textposition="outside",
                             cliponaxis=False, hovertemplate=f"%{{y}}<br>{title}: %{{text}}<extra></extra>"),
                      row=1, col=i)
        top = values.max() if values.notna().any() else 1.0
        if i == 1 and values.gt(0).any():  # parameters span 1 M (LoRA) to 100 M+ (full): log
            lo = values[values > 0].min()
            fig.update_xaxes(type="log", range=[math.log10(lo) - 0.5, math.log10(top) + 0.9],
                             **charts.log_ticks(lo / 10, top * 10), row=1, col=i)
        else:  # room right of the longest bar for its label
            fig.update_xaxes(range=[0, (top or 1.0) * 1.45], tickformat=",~g", row=1, col=i)
    fig.update_yaxes(autorange="reversed", automargin=True)  # the table's order, top to bottom
    fig.update_layout(template="plotly_white", height=110 + 34 * len(table), bargap=0.3,
                      margin=dict(l=10, r=20, t=70, b=30),
                      title=dict(text="Methods side by side", x=0.01, font=dict(size=15)))
    return fig
