"""Plotly figures of a run, drawn from its events (see `tunelab.training.events`).

    from tunelab.training.events import read_events
    from tunelab.teach import charts
    ev = read_events(run_dir)
    charts.loss_figure(ev).show()          # train loss line, eval loss markers
    charts.series(ev)["train"].tail()      # the same numbers as a DataFrame

The app redraws these while a run is going, so every function takes the events seen so
far: an empty list (the run has just started) gives a figure that says it is waiting,
never an exception. A resumed run logs the steps after its checkpoint again; the last
value of a step wins.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

TRAIN_COLUMNS = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"]
DPO_COLUMNS = ["rewards_chosen", "rewards_rejected", "margin", "accuracy", "logps_chosen", "logps_rejected",
               "kl", "nll_loss", "log_odds_ratio", "log_odds_chosen"]   # DPO's, KTO's (kl) and ORPO's fields
FEEDBACK_METHODS = ("dpo", "kto", "orpo")
EVAL_COLUMNS = ["step", "eval_loss", "eval_margin", "eval_accuracy"]
WAITING = "waiting for the first step…"
HEIGHT = 300
COLORS = qualitative.Plotly


def series(events: list[dict]) -> dict[str, pd.DataFrame]:
    """Tidy frames, one row a step, sorted by step: "train" (step, loss, lr, grad_norm,
    tokens_per_s, elapsed_s, plus the DPO fields when the run logged them) and "eval"
    (step, eval_loss, and eval_margin, eval_accuracy where present)."""
    events = events or []
    steps = [e for e in events if e.get("type") == "step" and e.get("step") is not None]
    evals = [e for e in events if e.get("type") == "eval" and e.get("step") is not None]
    train_cols = TRAIN_COLUMNS + [c for c in DPO_COLUMNS if any(c in e for e in steps)]
    eval_cols = ["step", "eval_loss"] + [c for c in EVAL_COLUMNS[2:] if any(c in e for e in evals)]
    return {"train": _frame(steps, train_cols), "eval": _frame(evals, eval_cols)}


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)
    # null (a NaN the writer cleaned) -> NaN, so every column but step is float
    df = df.astype({c: float for c in columns if c != "step"})
    df["step"] = df["step"].astype(int)
    return df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def feedback_method(events: list[dict]) -> str | None:
    """"dpo", "kto" or "orpo" when the events are such a run's (from its start event, or
    else its step fields); None for an SFT run."""
    for e in events or []:
        if e.get("type") == "start":
            return e.get("method") if e.get("method") in FEEDBACK_METHODS else None
    for e in events or []:   # a resumed run's file may start later
        if e.get("type") == "step":
            return "orpo" if "log_odds_chosen" in e else "kto" if "kl" in e else "dpo" if "margin" in e else None
    return None


def is_dpo(events: list[dict]) -> bool:
    """Whether the events are a DPO run's (from its start event, or its step fields)."""
    return feedback_method(events) == "dpo"


# --------------------------------------------------------------------------- single run


def loss_figure(events: list[dict], title: str | None = None) -> go.Figure:
    """Train loss per step (line) and eval loss (markers)."""
    s = series(events)
    train, ev = s["train"], s["eval"].dropna(subset=["eval_loss"])
    fig = empty_figure(title or "Loss", "loss")
    if train.empty and ev.empty:
        return waiting_figure(fig)
    fig.add_trace(go.Scatter(x=train["step"], y=train["loss"], name="train loss", mode=line_mode(train),
                             line=dict(color=COLORS[0], width=2)))
    if not ev.empty:
        fig.add_trace(go.Scatter(x=ev["step"], y=ev["eval_loss"], name="eval loss", mode="markers",
                                 marker=dict(color=COLORS[1], size=9, symbol="diamond")))
    return fit_flat_axis(fig)


def _step_line(events, column: str, title: str, y_title: str, name: str, color: str, **yaxis) -> go.Figure:
    """One per-step line of the train series, or the waiting figure before the first step."""
    train = series(events)["train"]
    fig = empty_figure(title, y_title)
    if train.empty:
        return waiting_figure(fig)
    fig.add_trace(go.Scatter(x=train["step"], y=train[column], name=name, mode=line_mode(train),
                             line=dict(color=color, width=2)))
    fig.update_yaxes(**yaxis)
    return fit_flat_axis(fig)


def lr_figure(events: list[dict]) -> go.Figure:
    """The learning rate the scheduler set at each step."""
    return _step_line(events, "lr", "Learning rate", "learning rate", "lr", COLORS[2], exponentformat="e")


def throughput_figure(events: list[dict]) -> go.Figure:
    """Training throughput in tokens per second at each logged step."""
    return _step_line(events, "tokens_per_s", "Throughput", "tokens / s", "tokens/s", COLORS[3],
                      rangemode="tozero")


def dpo_figure(events: list[dict]) -> go.Figure | None:
    """DPO's implicit rewards β·log π/π_ref of the chosen and rejected answers, their
    margin, and the share of pairs ranked right (accuracy, right axis). None when the
    run is not DPO."""
    if not is_dpo(events):
        return None
    train = series(events)["train"]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    _style(fig, "DPO rewards", "reward")
    if train.empty or "margin" not in train:
        return waiting_figure(fig)
    mode = line_mode(train)
    for col, name, color, dash in (("rewards_chosen", "chosen", COLORS[2], None),
                                   ("rewards_rejected", "rejected", COLORS[1], None),
                                   ("margin", "margin", COLORS[0], None)):
        if col in train:
            fig.add_trace(go.Scatter(x=train["step"], y=train[col], name=name, mode=mode,
                                     line=dict(color=color, width=2, dash=dash)), secondary_y=False)
    if "accuracy" in train:
        fig.add_trace(go.Scatter(x=train["step"], y=train["accuracy"], name="accuracy", mode=mode,
                                 line=dict(color=COLORS[4], width=1.5, dash="dot")), secondary_y=True)
    fig.update_yaxes(title_text="accuracy", range=[-0.05, 1.05], showgrid=False, secondary_y=True)
    fig.add_hline(y=0, line=dict(color="#bbb", width=1), secondary_y=False)
    return fig


def kto_figure(events: list[dict]) -> go.Figure | None:
    """KTO's implicit rewards β·log π/π_ref of the desirable and undesirable answers, their
    margin, and the estimate of KL(policy ‖ reference) that each reward is measured
    against (right axis). None when the run is not KTO."""
    if feedback_method(events) != "kto":
        return None
    return _feedback_lines(events, "KTO rewards", "reward",
                           [("rewards_chosen", "desirable", COLORS[2]), ("rewards_rejected", "undesirable", COLORS[1]),
                            ("margin", "margin", COLORS[0])], ("kl", "KL estimate", "KL"))


def orpo_figure(events: list[dict]) -> go.Figure | None:
    """ORPO's two loss parts (the SFT loss on the chosen answer, and −log σ of the log-odds
    gap, the odds-ratio part before its λ), and the gap itself, log odds(chosen) − log
    odds(rejected), on the right axis. None when the run is not ORPO."""
    if feedback_method(events) != "orpo":
        return None
    train = series(events)["train"]
    if "log_odds_ratio" in train:   # TRL logs log σ(gap): its negative is the loss part
        train = train.assign(or_loss=-train["log_odds_ratio"])
    return _feedback_lines(train, "ORPO loss parts", "loss",
                           [("nll_loss", "SFT part", COLORS[0]), ("or_loss", "odds-ratio part", COLORS[1])],
                           ("log_odds_chosen", "log-odds chosen − rejected", "log-odds gap"))


def _feedback_lines(events_or_train, title: str, y_title: str, lines: list, right: tuple) -> go.Figure:
    train = events_or_train if isinstance(events_or_train, pd.DataFrame) else series(events_or_train)["train"]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    _style(fig, title, y_title)
    if train.empty or lines[0][0] not in train:
        return waiting_figure(fig)
    mode = line_mode(train)
    for col, name, color in lines:
        if col in train:
            fig.add_trace(go.Scatter(x=train["step"], y=train[col], name=name, mode=mode,
                                     line=dict(color=color, width=2)), secondary_y=False)
    col, name, axis = right
    if col in train:
        fig.add_trace(go.Scatter(x=train["step"], y=train[col], name=name, mode=mode,
                                 line=dict(color=COLORS[4], width=1.5, dash="dot")), secondary_y=True)
    fig.update_yaxes(title_text=axis, showgrid=False, secondary_y=True)
    fig.add_hline(y=0, line=dict(color="#bbb", width=1), secondary_y=False)
    return fig


def feedback_figure(events: list[dict], method: str | None = None) -> go.Figure | None:
    """The figure of a DPO, KTO or ORPO run (`method` when its events do not say yet:
    the waiting figure); None for an SFT run."""
    method = feedback_method(events) or method
    if method not in FEEDBACK_METHODS:
        return None
    events = events if feedback_method(events) else [{"type": "start", "method": method}]
    return {"dpo": dpo_figure, "kto": kto_figure, "orpo": orpo_figure}[method](events)


# --------------------------------------------------------------------------- several runs


def overlay_loss(runs: dict[str, list[dict]], title: str | None = None) -> go.Figure:
    """One train-loss line per run (legend = run id) and its eval loss dashed, same colour."""
    fig = empty_figure(title or "Loss by run", "loss")
    drawn = has_eval = False
    for i, (run_id, events) in enumerate((runs or {}).items()):
        s = series(events)
        train, ev = s["train"], s["eval"].dropna(subset=["eval_loss"])
        color = COLORS[i % len(COLORS)]
        if not train.empty:
            fig.add_trace(go.Scatter(x=train["step"], y=train["loss"], name=run_id, mode=line_mode(train),
                                     legendgroup=run_id, line=dict(color=color, width=2)))
            drawn = True
        if not ev.empty:
            # Out of the legend (the title says dashed = eval): one entry a run, not two.
            fig.add_trace(go.Scatter(x=ev["step"], y=ev["eval_loss"], name=f"{run_id} (eval)",
                                     mode="lines+markers", legendgroup=run_id, showlegend=False,
                                     line=dict(color=color, width=1.5, dash="dash")))
            drawn = has_eval = True
    if not drawn:
        return waiting_figure(fig)
    if has_eval and title is None:
        fig.update_layout(title_text="Loss by run <span style='font-size:12px;color:#888'>"
                                     "(solid: train, dashed: eval)</span>")
    # Run ids are long ("20261128-101010-21-walk-lora"): across the top, a few of them wrap
    # into rows that cover the title. Under the plot instead, with room for a row per two runs.
    rows = math.ceil(len(runs) / 2)
    fig.update_layout(height=HEIGHT + 22 * rows, margin=dict(b=40 + 22 * rows),
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.0,
                                  xanchor="left", x=0.0))
    return fit_flat_axis(fig)


# --------------------------------------------------------------------------- numbers for people


def fmt_count(n) -> str:
    """2442240 -> "2.44 M", 134515008 -> "135 M", 950 -> "950": three significant digits."""
    if n is None or not math.isfinite(float(n)):
        return "—"
    n = float(n)
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g}"


def fmt_mb(mb) -> str:
    """3953.3633 -> "3,953 MB", 12.73 -> "12.7 MB"."""
    if mb is None or not math.isfinite(float(mb)):
        return "—"
    return f"{float(mb):,.0f} MB" if abs(mb) >= 100 else f"{float(mb):.3g} MB"


def fmt_minutes(minutes) -> str:
    """1.398 -> "1.4 min", 0.3 -> "18 s"."""
    if minutes is None or not math.isfinite(float(minutes)):
        return "—"
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes:,.1f} min"


def log_ticks(lo: float, hi: float) -> dict:
    """Ticks of a log axis at the powers of ten only, named like "1M", "10M": plotly's own
    ticks add 2 and 5 between them with no unit ("2, 10M, 5, 2, 1M, 5"), unreadable in a
    small panel."""
    vals = [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    return dict(tickvals=vals, ticktext=[fmt_count(v).replace(" ", "") for v in vals])


# --------------------------------------------------------------------------- styling


def empty_figure(title: str, y_title: str) -> go.Figure:
    """A styled empty figure with its title and y-axis title: every chart starts here."""
    return _style(go.Figure(), title, y_title)


def _style(fig: go.Figure, title: str, y_title: str) -> go.Figure:
    fig.update_layout(template="plotly_white", height=HEIGHT, title=dict(text=title, x=0.01, font=dict(size=15)),
                      margin=dict(l=55, r=20, t=45, b=40), hovermode="x unified",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    fig.update_xaxes(title_text="step", rangemode="tozero")
    fig.update_yaxes(title_text=y_title)
    return fig


def waiting_figure(fig: go.Figure) -> go.Figure:
    """`fig` with the note that says its run has no points yet."""
    fig.add_annotation(text=WAITING, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=14, color="#888"))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def fit_flat_axis(fig: go.Figure) -> go.Figure:
    """Give the y axis a range from 0 to 10 % past the value when every point on it has the
    same value (a run's first step, a constant learning rate): plotly's autorange then pads
    the value by ±1, so a learning rate of 2e-4 sits on a −1…1 axis and reads as 0."""
    ys = [float(v) for t in fig.data if (getattr(t, "yaxis", None) or "y") == "y" and t.y is not None
          for v in t.y if v is not None and math.isfinite(float(v))]
    if ys and min(ys) == max(ys) != 0:
        fig.update_layout(yaxis_range=sorted([0.0, ys[0] * 1.1]))
    return fig


def line_mode(df: pd.DataFrame) -> str:
    """Markers too while there are few points, so a 1-step run shows something."""
    return "lines+markers" if len(df) <= 30 else "lines"
