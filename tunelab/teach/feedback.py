"""DPO, KTO and ORPO runs side by side (lab 6): what each cost, what each logged, and,
on request, the lab's check on each.

    table = feedback_summary(["<dpo run>", "<kto run>", "<orpo run>"])
    feedback_display(table)
    checks = feedback_checks(["<dpo run>", ...], get_lab("feedback").check)

The figures are `charts.feedback_figure(events)`, one a run.
"""

from __future__ import annotations

import pandas as pd

from . import charts
from .dpo import last_value
from ..training import runs
from ..training.config import ConfigError, RunConfig
from ..training.events import read_events
from ..training.runfolder import SUMMARY_FILE, read_json

FEEDBACK_HINT = ("Pick up to three finished DPO, KTO or ORPO runs (lab 6 trains one of each on the same feedback) "
                 "to see what each cost and what each logged, side by side.")
SUMMARY_COLUMNS = ["run", "method", "learns from", "beta", "steps", "s a step", "peak MB", "final loss",
                   "final margin", "signal"]
LEARNS_FROM = {"dpo": "pairs, against a reference", "kto": "single answers, against a reference",
               "orpo": "pairs, no reference"}


def feedback_summary(run_ids: list) -> pd.DataFrame:
    """One row a run: its method and what it learns from, β (ORPO's λ), steps, seconds a
    step, peak memory, the last logged loss and margin, and its own signal: DPO's accuracy,
    KTO's KL estimate, ORPO's log-odds gap (the last logged value of each)."""
    rows = []
    for ref in run_ids:
        d = runs.find_run(ref)
        try:
            cfg = RunConfig.from_yaml(d / "config.yaml")
            method, beta = cfg.method, (getattr(cfg, cfg.method).beta if cfg.adapter else None)
        except (ConfigError, OSError):
            method = beta = None
        s = read_json(d / SUMMARY_FILE)
        train = charts.series(read_events(d))["train"]
        signal = {"dpo": ("accuracy", "accuracy {:.0%}"), "kto": ("kl", "KL {:.3g}"),
                  "orpo": ("log_odds_chosen", "log-odds gap {:+.3g}")}.get(method)
        value = last_value(train, signal[0]) if signal else None
        steps = s.get("steps")
        rows.append({"run": d.name, "method": method, "learns from": LEARNS_FROM.get(method, "—"), "beta": beta,
                     "steps": steps,
                     "s a step": s["wall_time_s"] / steps if steps and s.get("wall_time_s") else None,
                     "peak MB": s.get("peak_memory_mb"), "final loss": last_value(train, "loss"),
                     "final margin": last_value(train, "margin"),
                     "signal": signal[1].format(value).replace("%", " %") if value is not None else "—"})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def feedback_display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: rounded, "—" where a run did not record a value."""
    def g(v, fmt="{:.3g}"):
        return "—" if v is None or pd.isna(v) else fmt.format(v)
    return pd.DataFrame({
        "run": table["run"], "method": [str(m).upper() if m else "—" for m in table["method"]],
        "learns from": table["learns from"], "β (ORPO: λ)": [g(v) for v in table["beta"]],
        "steps": [g(v, "{:.0f}") for v in table["steps"]], "s a step": [g(v, "{:.2f}") for v in table["s a step"]],
        "peak memory": [g(v, "{:,.0f} MB") for v in table["peak MB"]],
        "final loss": [g(v) for v in table["final loss"]], "final margin": [g(v, "{:+.3g}") for v in table["final margin"]],
        "its own signal": table["signal"]})


def feedback_checks(run_ids: list, check, arena=None, limit: int | None = None) -> pd.DataFrame:
    """The lab's check on each run (labcheck.run_check: held-out prompts, base and tuned
    decoded alike; the base answers once): one row a run with each score, base → tuned,
    and whether it passes. `limit`: the first prompts only, for a quick look."""
    from .labcheck import fmt_score, run_check
    rows, base = [], None
    for ref in run_ids:
        res = run_check(ref, check, arena=arena, base_answers=base, limit=limit)
        base = res["answers"]["base"]
        rows.append({"run": res["run"], **{m: f"{fmt_score(m, res['base'].get(m))} → {fmt_score(m, res['tuned'].get(m))}"
                                           for m in res["judged"]},
                     "passes": "✓" if not res["misses"] else "✗ " + "; ".join(res["misses"])})
    return pd.DataFrame(rows)
