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
    summary, here = labs_mod.matrix_summary(), labs_mod.machine_class()
    return [(f"{lab.number} · {lab.title} (~{labs_mod.lab_minutes(lab, here, summary)[0]:g} min)", lab.key)
            for lab in all_labs]


def time_line(lab: labs_mod.Lab, summary: dict | None = None, here: str | None = None) -> tuple[str, str]:
    """("Expected time here (AVX2 kernels, fp32)", "~4.1 min"): the lab's runs timed on this
    machine's class by labs/matrix.py, or, until that class has been timed, the card's own
    figure, saying so."""
    summary = labs_mod.matrix_summary() if summary is None else summary
    here = here or labs_mod.machine_class()
    minutes, cls = labs_mod.lab_minutes(lab, here, summary)
    if cls == here:
        return f"Expected time here ({labs_mod.class_name(here)})", f"~{minutes:g} min"
    precision = "fp32" if here.endswith("-fp32") and lab.expected.get("minutes_fp32") else "bf16 where native"
    return (f"Expected time, 2 CPU cores, {precision} (not yet timed on {labs_mod.class_name(here)})",
            f"~{minutes:g} min")


def class_lines(lab: labs_mod.Lab, summary: dict | None = None) -> str:
    """The lab's figures by machine class, as labs/matrix.py measured them: cells passed,
    each judged score as a range over seeds and threads, seconds a step and peak memory."""
    summary = labs_mod.matrix_summary() if summary is None else summary
    out = []
    for variant in ["card", *(a["name"] for a in lab.compare or [])]:
        for cls, g in sorted(labs_mod.class_figures(lab.number, variant, summary).items()):
            scores = ", ".join(f"{m} {labcheck.fmt_score(m, lo)}–{labcheck.fmt_score(m, hi)}"
                               for m, (lo, hi) in g["tuned"].items())
            mem = g["peak_memory_mb"]
            out.append(f"{'' if variant == 'card' else variant.upper() + ', '}{labs_mod.class_name(cls)}: "
                       f"{g['passed']}/{g['cells']} runs pass (seeds {', '.join(map(str, g['seeds']))}; "
                       f"{', '.join(map(str, g['threads']))} threads), tuned {scores}, "
                       f"{g['s_per_step'][0]:.1f}–{g['s_per_step'][1]:.1f} s a step, "
                       f"peak {logic.fmt_mb(mem[0])}–{logic.fmt_mb(mem[1])}")
    return "; ".join(out)


def card_html(lab: labs_mod.Lab) -> str:
    e = lab.expected
    summary = labs_mod.matrix_summary()
    facts = [("Method", lab.config.method), ("Dataset", lab.dataset), ("Steps", lab.config.train.max_steps),
             time_line(lab, summary),
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
    stale = labs_mod.stale_data(lab.number)
    if stale:
        check += (f" <b>Note.</b> The figures in this card were measured before {html.escape(', '.join(stale))} "
                  f"last changed; <code>python -m labs.measure --lab {lab.key}</code> measures them again.")
    by_class = class_lines(lab, summary)
    if by_class:
        check += f" <b>By machine</b> (labs/matrix.py): {html.escape(by_class)}."
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
