"""DPO runs read and compared: the chosen/rejected log-probabilities over training, and a
table (β, learning rate, final margin and accuracy, how far each answer's log p moved) with
a sentence saying what its numbers show.

    dpo_logps_figure(events)
    table = dpo_summary(["<dpo run>", "<pushed run>"])
    dpo_display(table); dpo_note(table)
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from . import charts
from ..training import runs
from ..training.config import ConfigError, RunConfig
from ..training.events import read_events
from ..training.runfolder import SUMMARY_FILE, read_json


def dpo_logps_figure(events: list[dict]) -> go.Figure:
    """The policy's log-probability of the chosen and of the rejected answers over
    training. DPO's loss only cares about their gap relative to the reference, so both
    may fall; what must grow is chosen − rejected (the implicit reward margin)."""
    train = charts.series(events)["train"]
    fig = charts.empty_figure("DPO log-probabilities", "log p(answer)")
    if train.empty or "logps_chosen" not in train:
        return charts.waiting_figure(fig)
    mode = charts.line_mode(train)
    for col, name, color in (("logps_chosen", "chosen", charts.COLORS[2]),
                             ("logps_rejected", "rejected", charts.COLORS[1])):
        fig.add_trace(go.Scatter(x=train["step"], y=train[col], name=name, mode=mode, line=dict(color=color, width=2)))
    return fig


DPO_SUMMARY_COLUMNS = ["run", "beta", "lr", "steps", "final loss", "final margin", "final accuracy",
                       "chosen logp change", "rejected logp change"]
DPO_HINT = ("Pick a finished DPO run (lab 4), and under Compare with the run that pushes it (a lower β or a "
            "higher learning rate), to see both side by side.")


def last_value(train: pd.DataFrame, col: str):
    """The last logged value of column `col` in a run's step table, or None."""
    vals = train[col].dropna() if col in train else ()
    return float(vals.iloc[-1]) if len(vals) else None


def _change(train: pd.DataFrame, col: str):
    """Last logged value minus first; None with fewer than two logged values."""
    vals = train[col].dropna() if col in train else ()
    return float(vals.iloc[-1] - vals.iloc[0]) if len(vals) >= 2 else None


def dpo_summary(run_ids: list) -> pd.DataFrame:
    """One row per DPO run (an id, an id prefix or a folder), what a learner compares: β,
    learning rate, steps, the last logged DPO loss, reward margin and accuracy, and how far
    the policy's log-probability of the chosen and of the rejected answers moved from the
    first logged step to the last (in nats; each step logs its own batch, so this is a
    trend, not one pair measured twice). Anything a run did not record is None."""
    rows = []
    for ref in run_ids:
        d = runs.find_run(ref)
        try:
            cfg = RunConfig.from_yaml(d / "config.yaml")
            beta, lr = cfg.dpo.beta, cfg.train.lr
        except (ConfigError, OSError):
            beta = lr = None
        s = read_json(d / SUMMARY_FILE)
        train = charts.series(read_events(d))["train"]
        loss = last_value(train, "loss")
        rows.append({"run": d.name, "beta": beta, "lr": lr,
                     "steps": s.get("steps", int(train["step"].iloc[-1]) if len(train) else None),
                     "final loss": loss if loss is not None else s.get("final_loss"),
                     "final margin": last_value(train, "margin"), "final accuracy": last_value(train, "accuracy"),
                     "chosen logp change": _change(train, "logps_chosen"),
                     "rejected logp change": _change(train, "logps_rejected")})
    return pd.DataFrame(rows, columns=DPO_SUMMARY_COLUMNS)


def _missing(v) -> bool:
    return v is None or pd.isna(v)


def _sci(v) -> str:
    """0.0005 -> "5e-4", 0.00025 -> "2.5e-4", 0.1 -> "0.1"."""
    if _missing(v):
        return "—"
    if v >= 0.01:
        return f"{v:g}"
    mantissa, exp = f"{v:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def _g(v, signed: bool = False) -> str:
    """Three significant digits ("25.1", "0.034", "312"), a true minus sign; "—" when missing."""
    if _missing(v):
        return "—"
    return (f"{v:+.3g}" if signed else f"{v:.3g}").replace("-", "−")


def dpo_display(table: pd.DataFrame) -> pd.DataFrame:
    """The DPO comparison as people read it: "5e-4", "+3.21", "100 %", "—" where missing."""
    return pd.DataFrame({
        "run": table["run"], "β": [_g(v) for v in table["beta"]], "learning rate": [_sci(v) for v in table["lr"]],
        "steps": ["—" if _missing(v) else f"{int(v)}" for v in table["steps"]],
        "final DPO loss": [_g(v) for v in table["final loss"]],
        "final margin": [_g(v) for v in table["final margin"]],
        "final accuracy": ["—" if _missing(v) else f"{v:.0%}".replace("%", " %") for v in table["final accuracy"]],
        "Δ log p chosen": [_g(v, signed=True) for v in table["chosen logp change"]],
        "Δ log p rejected": [_g(v, signed=True) for v in table["rejected logp change"]]})


def _moved(v) -> str:
    """A log-probability change in words: "fell by 40.2 nats", "rose by 1.3 nats"."""
    if _missing(v):
        return "was not logged"
    if abs(v) < 1e-3:
        return "stayed where it was"
    n = _g(abs(v))
    return f"{'fell' if v < 0 else 'rose'} by {n} nat{'' if n == '1' else 's'}"


def _apart(dc, dr) -> str:
    """What the chosen/rejected changes say together, when they say something; else ""."""
    if _missing(dc) or _missing(dr):
        return ""
    if dc < -1e-3 and dr < dc:
        return (": it pushed both answers down, the rejected further — the margin grows while the answers it "
                "should prefer become less likely")
    if dc >= -1e-3 and dr < -1e-3:
        return f", while the rejected's {_moved(dr)}: it moved the answers apart, as the pairs ask"
    return f", the rejected's {_moved(dr)}"


def dpo_note(table: pd.DataFrame) -> str:
    """One or two sentences on the runs in `dpo_summary`'s table (the first two), stating
    only what its numbers show: which run's margin grew further, and what happened to its
    chosen and rejected answers' log-probability on the way."""
    rows = table.to_dict("records")
    if not rows:
        return DPO_HINT
    for r in rows[:2]:
        if _missing(r["final margin"]):
            return f"{r['run']} logged no reward margin: it is not a DPO run, or it stopped before its first step."
    label = {id(r): f"The run with β {_g(r['beta'])} / lr {_sci(r['lr'])}" for r in rows[:2]}
    if len(set(label.values())) < len(label):   # the same settings: name the runs instead
        label = {id(r): f"The run {r['run']}" for r in rows[:2]}
    if len(rows) == 1:
        r = rows[0]
        acc = "" if _missing(r["final accuracy"]) else f" and {r['final accuracy']:.0%} of the pairs ranked right"
        return (f"{label[id(r)]} ends with margin {_g(r['final margin'])}{acc}; its chosen answers' log-probability "
                f"{_moved(r['chosen logp change'])}{_apart(r['chosen logp change'], r['rejected logp change'])}. "
                "Pick a second DPO run under Compare with to set the two side by side.")
    hi, lo = sorted(rows[:2], key=lambda r: r["final margin"], reverse=True)
    dc, dr = hi["chosen logp change"], hi["rejected logp change"]
    text = (f"{label[id(hi)]} ends with margin {_g(hi['final margin'])} against {_g(lo['final margin'])}, and its "
            f"chosen answers' log-probability {_moved(dc)} (the other run's {_moved(lo['chosen logp change'])})"
            f"{_apart(dc, dr)}.")
    drift = []
    if not _missing(hi["beta"]) and not _missing(lo["beta"]) and hi["beta"] < lo["beta"]:
        drift.append("a lower β")
    if not _missing(hi["lr"]) and not _missing(lo["lr"]) and hi["lr"] > lo["lr"]:
        drift.append("a higher learning rate")
    if drift:
        text += (" β and the frozen reference keep the policy near the base; with "
                 f"{' and '.join(drift)} it moved further from it.")
    return text
