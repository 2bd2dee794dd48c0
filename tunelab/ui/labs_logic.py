"""The Labs tab's logic: a card as the page shows it, and what "Load into Train" fills in.

No widgets here (labs_tab.py builds them): the card's facts and check as HTML, the list's
labels, the terminal line for a lab or its next step, and the Train fields' values.
"""

from __future__ import annotations

import html

from ..modelio import models
from ..teach import labcheck
from ..teach import labs as labs_mod
from . import logic


def lab_choices(all_labs: list[labs_mod.Lab]) -> list[tuple[str, str]]:
    return [(f"{lab.number} · {lab.title} (~{lab.minutes:g} min)", lab.key) for lab in all_labs]


def card_html(lab: labs_mod.Lab) -> str:
    e = lab.expected
    facts = [("Method", lab.config.method), ("Dataset", lab.dataset), ("Steps", lab.config.train.max_steps),
             ("Expected time, 2 CPU cores", f"~{lab.minutes:g} min"),
             *([("Without native bf16 (fp32)", f"~{e['minutes_fp32']:g} min")] if e.get("minutes_fp32") else []),
             ("Expected final loss", f"{e['loss'][0]:g}–{e['loss'][1]:g}"),
             ("Expected peak memory", logic.fmt_mb(e["peak_memory_mb"]))]
    rows = "".join(f'<div class="tl-stat"><div class="tl-stat-v" style="font-size:1rem">{html.escape(str(v))}</div>'
                   f'<div class="tl-stat-l">{html.escape(k)}</div></div>' for k, v in facts)
    measured = ", ".join(f"{m} {labcheck.fmt_score(m, e[m][0])} → {labcheck.fmt_score(m, e[m][1])}"
                         for m in lab.check.thresholds() if m in e)
    machine = labs_mod.measured("machine")
    check = f"<b>Check.</b> {html.escape(labcheck.explain(lab.check))}" + (
        f" Measured, base → tuned: {html.escape(measured)}." if measured else "") + (
        f" Figures measured by labs/measure.py on {html.escape(machine)}." if machine else "")
    return (f'<div class="tl-method"><b>Lab {lab.number}: {html.escape(lab.title)}</b><br>{html.escape(lab.concept)}'
            f'</div><div class="tl-stats" style="margin-top:10px">{rows}</div><p class="tl-hint">{check}</p>')


def next_label(lab: labs_mod.Lab) -> str:
    return f"Load {lab.next['title']} into Train" if lab.next else "Load the next step into Train"


def cli_line(lab: labs_mod.Lab, step: bool = False, arm: str | None = None) -> str:
    """The same lab (or its next step, or one of its `compare` arms) from a terminal."""
    line = f"python -m tunelab train {lab.path.relative_to(labs_mod.LABS_DIR.parent)}"
    if arm:
        line += "".join(f" --set {o}" for o in labs_mod.next_overrides(lab.arm(arm)))
    elif step and lab.next:
        line += "".join(f" --set {o}" for o in labs_mod.next_overrides(lab.next))
    return line


def arm_choices(lab: labs_mod.Lab) -> list[tuple[str, str]]:
    """A lab's `compare` arms as (title, name) for a picker; empty when it has none."""
    return [(arm["title"], arm["name"]) for arm in lab.compare or []]


def lab_values(lab: labs_mod.Lab, paths, step: bool = False, arm: str | None = None) -> dict:
    """The Train tab's field values for a lab, or with `step` for its next step, or for one
    of its `compare` arms: its config, with a run name saying which lab (and step or arm)."""
    cfg = lab.arm_config(arm) if arm else lab.next_config() if step and lab.next else lab.config
    values = logic.flatten(cfg.to_dict())
    values["name"] = values.get("name") or f"lab{lab.number}-{lab.key}"
    if lab.config.model == models.DEFAULT_MODEL:
        values["model"] = logic.default_model()  # a host may point the default at another folder
    return {p: values[p] for p in paths if p in values}
