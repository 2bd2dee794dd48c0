"""What the page says happened, and what it is about.

A message beside the Train tab's form is about the form (an error that kept Start from
starting anything) or about one run (Started, Queued, Stopping, Cancelled). A run's
message carries the run's id in `data-run`, and `data-until` says how long it holds:
"end" for one that describes the run only while it goes (Started, Stopping: once the run
has ended its progress panel says how), "follow" for one that stays true (Cancelled)
until the tab follows another run, and "queued" for a run waiting for a training slot:
its place in line changes as others join and leave, so the timer redraws it each tick
from the queue as read for the progress panel in the same tick (`requeue`), and puts
"Started" in its place when the run leaves the line to train. The Train tab's timer reads
the tags back (`keep`) and clears what no longer belongs, so no message outlives its run
beside another one.

An upload is the Data tab's; it becomes the Train tab's dataset only when the Train
tab's method can train on it (`upload_fits`), and the page says which happened.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from ..training.config import DATA_KINDS, data_fits, methods_for
from .logic import esc, message_html, queued_text, started_text

_RUN_TAG = re.compile(r'^<div data-run="([^"]*)" data-until="(end|follow|queued)">')


def run_note(text: str, kind: str, run_id: str, until: str = "end") -> str:
    """A message about `run_id`; until="end" clears it when the run ends, "follow" when the
    tab follows another run, "queued" when it leaves the queue (see `requeue`)."""
    return f'<div data-run="{esc(run_id)}" data-until="{until}">{message_html(text, kind)}</div>'


def form_note(text: str) -> str:
    """An error in the form: nothing was started, whatever run the tab shows below."""
    return f'<div data-about="form">{message_html(f"Not started — {text}", "error")}</div>'


def about(note: str | None) -> tuple[str | None, str | None]:
    """(run id, until) of a run's message; (None, None) for a form message or none."""
    m = _RUN_TAG.match(note or "")
    return (html.unescape(m[1]), m[2]) if m else (None, None)


def keep(note: str | None, run_id: str | None, settled: bool) -> bool:
    """Whether a message still belongs beside the followed run `run_id` (settled: it ended)."""
    run, until = about(note)
    if run is None:   # empty, or about the form: no run's to clear
        return True
    return run == run_id and not (settled and until in ("end", "queued"))


def launch_note(run_id: str, place: tuple[int, int] | None, more: str = "") -> str:
    """What Start says about the run it started (`place` None) or queued (its place in
    line), then `more` (what the run trains on, where to follow it)."""
    if place:
        return run_note(_join(queued_text(run_id, place), more), "ok", run_id, "queued")
    return run_note(_join(started_text(run_id), more), "ok", run_id)


def requeue(note: str | None, run_id: str | None, state: str | None, place: tuple[int, int] | None,
            more: str = "") -> str | None:
    """A queued run's message as it is now (None: the message is not one, or is unchanged).

    `state` is the run's status and `place` its jobs.queue_position, read once for this
    tick's progress panel too, so the two never disagree; `more` is what `launch_note` was
    given. While the run waits, the message names its place now; once it has a training
    process, "Started"; once it ended without training (cancelled, or failed to start from
    the queue), nothing: the panel says how."""
    run, until = about(note)
    if until != "queued" or run != run_id:
        return None
    if state == "queued":
        new = run_note(_join(queued_text(run_id, place), more), "ok", run_id, "queued")
    elif state in ("starting", "running"):
        new = run_note(_join(started_text(run_id, waited=True), more), "ok", run_id)
    else:
        new = ""
    return None if new == note else new


def _join(text: str, more: str) -> str:
    return f"{text} {more}" if more else text


def upload_fits(objective: str, method: str) -> bool:
    """Whether the Train tab's method can train on an uploaded file of this objective."""
    return data_fits(method, objective)


def upload_note(objective: str, method: str, current: str | None) -> str:
    """What became of an upload in the Train tab: its new dataset, or not and why."""
    if upload_fits(objective, method):
        return message_html(f"It is now the Train tab's dataset (method {method}).", "ok")
    kind = DATA_KINDS[objective]
    names = methods_for(objective)
    methods = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    keeps = f"keeps {Path(current).name}" if current else "has no dataset yet"
    return message_html(f"This file holds {kind}, which method {method} cannot train on: the Train tab "
                        f"{keeps}. Choose method {methods} there and this file is picked.", "warn")
