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
