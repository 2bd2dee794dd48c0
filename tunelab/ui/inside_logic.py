"""The Inside tab's logic: which runs each view offers, and the DPO view's outputs for two runs.

No widgets here (inside_tab.py builds them around these and the tunelab.teach views).
"""

from __future__ import annotations

from .. import teach
from ..modelio.models import ModelError
from ..teach import charts
from ..training import runs
from ..training.events import read_events
from ..training.runfolder import RunError
from . import logic

ERRORS = (RunError, ModelError, ValueError, OSError, RuntimeError)
SHIFT_PICK = ("Pick a tuned run: this view answers the prompt with it and with the base, decoded alike, and shades "
              "each token of the tuned answer by how much more (green) or less (red) likely the tuning made it. "
              "Finished runs are listed; press ↻ Runs after one ends.")


def finished(kind: str | None = None) -> list[str]:
    out = []
    for r in runs.list_runs():
        if r["status"] not in ("finished", "stopped") or r["method"] is None:
            continue
        if kind == "adapter" and r["method"] == "full":
            continue
        if kind == "dpo" and r["method"] != "dpo":
            continue
        if kind == "feedback" and r["method"] not in charts.FEEDBACK_METHODS:
            continue
        out.append(r["run_id"])
    return out


def dpo_view(run1: str | None, run2: str | None) -> tuple:
    """The DPO tab's outputs for the picked runs (ids; either may be empty): the summary
    table as shown, the note (HTML), the first column's rewards and log-probability figures,
    the second column's, and whether the second column shows. Picking only one dropdown
    fills the first column; the same run twice counts once."""
    ids = list(dict.fromkeys(r for r in (run1, run2) if r))
    empty = teach.dpo_display(teach.dpo_summary([]))
    figs = []
    try:
        dirs = [logic.run_dir(r) for r in ids]  # by id only, as everywhere in the app
        table = teach.dpo_summary(dirs)
        for d in dirs:
            events = read_events(d)
            figs += [charts.dpo_figure(events), teach.dpo_logps_figure(events)]
    except ERRORS as e:
        return (empty, logic.message_html(str(e), "error"), None, None, None, None, False)
    figs += [None] * (4 - len(figs))
    return (teach.dpo_display(table), logic.message_html(teach.dpo_note(table), "info"), *figs, len(dirs) > 1)


FEEDBACK_RUNS = 3   # the Feedback view's columns: lab 6's DPO, KTO and ORPO


def feedback_view(run_ids: list[str | None]) -> tuple:
    """The Feedback view's outputs for the picked runs (ids; any may be empty, the same run
    twice counts once): the summary table as shown, the note, and one figure a column
    (None for an empty column)."""
    ids = list(dict.fromkeys(r for r in run_ids if r))
    empty = teach.feedback_display(teach.feedback_summary([]))
    try:
        dirs = [logic.run_dir(r) for r in ids]
        table = teach.feedback_display(teach.feedback_summary(dirs))
        figs = [charts.feedback_figure(read_events(d)) for d in dirs]
    except ERRORS as e:
        return (empty, logic.message_html(str(e), "error"), *[None] * FEEDBACK_RUNS)
    note = teach.FEEDBACK_HINT if not ids else (
        "Each method's own signal is on its chart. To see what each taught, run the lab's check on them: "
        "the base and each run answer lab 6's held-out questions, decoded alike.")
    return (table, logic.message_html(note, "info"), *(figs + [None] * FEEDBACK_RUNS)[:FEEDBACK_RUNS])


def feedback_check(run_ids: list[str | None]) -> tuple:
    """(the check's table, a note) for the picked runs: lab 6's check on each."""
    from ..teach.labs import get_lab
    ids = list(dict.fromkeys(r for r in run_ids if r))
    if not ids:
        return None, logic.message_html("Pick a run first.", "warn")
    check = get_lab("feedback").check
    try:
        for r in ids:
            logic.run_dir(r)   # by id only, as everywhere in the app
        table = teach.feedback_checks(ids, check)
    except ERRORS as e:
        return None, logic.message_html(str(e), "error")
    from ..teach.labcheck import explain
    return table, logic.message_html(f"Lab 6's check: {explain(check)}", "info")
