"""The Inside tab's logic: which runs each view offers, the DPO view's outputs for two runs,
and the line its long computations wait in.

No widgets here (inside_tab.py builds them around these and the tunelab.teach views).

"Answer and shade" and lab 6's check each load models and take half a minute to a few
minutes on a CPU, so the server runs one at a time (two at once on two cores would each
take twice as long, with twice the memory). The others wait in `LINE`, first come first
served, and their page says their place and what runs ahead, then "Computing…" with the
seconds so far, then the answer (`in_line`).
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

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


def feedback_check_label() -> str:
    """The check button's words, with the time lab 6's check took on this machine's class
    (labs/matrix.py), or on the slowest class measured, named, when this one has not been."""
    from ..teach import labs
    lab = labs.get_lab("feedback")
    here = labs.machine_class()
    minutes, cls = labs.lab_minutes(lab, here, field="check_minutes")
    if minutes is None:
        return "Run lab 6's check on these runs (a few minutes on a CPU)"
    where = "here" if cls == here else f"on {labs.class_name(cls)}"
    return f"Run lab 6's check on these runs (about {max(1, round(minutes)):g} min {where})"


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


# --------------------------------------------------------------------------- the line

@dataclass(eq=False)
class Ticket:
    kind: str                       # what it computes: "lab check", "shading"
    user: str | None                # the signed-in user who asked (None without a login)
    id: int = 0
    joined: float = field(default_factory=time.time)
    seen: float = 0.0               # when its page last asked for its place (the line's clock)
    began: float | None = None      # when its computation started (time.time)


class Line:
    """First come, first served: `slots` computations at a time, and every waiter knows
    its place. Thread-safe; no gradio.

        ticket = line.join("lab check", user)
        try:
            while (place := line.wait(ticket, 1.0)) > 0:   # 1: next up; 0: your turn
                ...                                         # say the place
            line.begin(ticket)
            ...                                             # compute
        finally:
            line.leave(ticket)                              # always: an error, a closed page

    A waiter whose page has not asked for its place for `stale_s` seconds is dropped (a
    page closed without its handler being closed must not hold the line); one that asks
    again rejoins at the back. A ticket that began is never dropped: it leaves when its
    computation ends.
    """

    def __init__(self, slots: int = 1, stale_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.slots, self.stale_s, self.clock = slots, stale_s, clock
        self._cond = threading.Condition()
        self._tickets: list[Ticket] = []
        self._ids = itertools.count(1)
        self._took: dict[str, deque] = defaultdict(lambda: deque(maxlen=5))

    def join(self, kind: str, user: str | None = None) -> Ticket:
        with self._cond:
            ticket = Ticket(kind, user, id=next(self._ids), seen=self.clock())
            self._tickets.append(ticket)
            return ticket

    def _tidy(self) -> None:
        now = self.clock()
        stale = [t for t in self._tickets if t.began is None and now - t.seen > self.stale_s]
        if stale:
            self._tickets = [t for t in self._tickets if t not in stale]
            self._cond.notify_all()

    def _place(self, ticket: Ticket) -> int:
        i = self._tickets.index(ticket)
        return 0 if i < self.slots else i - self.slots + 1

    def place(self, ticket: Ticket) -> int:
        """0: its turn; n: n-th in line (1: next up)."""
        with self._cond:
            ticket.seen = self.clock()
            self._tidy()
            if ticket not in self._tickets:   # dropped as stale, yet its page still asks: to the back
                self._tickets.append(ticket)
            return self._place(ticket)

    def wait(self, ticket: Ticket, timeout: float) -> int:
        """Its place once its turn comes or `timeout` seconds pass, whichever is first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (place := self.place(ticket)) > 0 and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return place

    def begin(self, ticket: Ticket) -> None:
        with self._cond:
            if self.place(ticket) > 0:
                raise RuntimeError(f"ticket {ticket.id} is not at the front of the line")
            ticket.began = time.time()

    def leave(self, ticket: Ticket) -> None:
        """Out of the line (done, failed or given up); the next in line goes. Safe to repeat."""
        with self._cond:
            if ticket in self._tickets:
                self._tickets.remove(ticket)
                if ticket.began is not None:
                    self._took[ticket.kind].append(time.time() - ticket.began)
                self._cond.notify_all()

    def ahead(self, ticket: Ticket) -> list[Ticket]:
        """The tickets before this one: those computing, then those waiting."""
        with self._cond:
            return self._tickets[:self._tickets.index(ticket)] if ticket in self._tickets else []

    def tickets(self) -> list[Ticket]:
        """Everyone in line now, computing first."""
        with self._cond:
            self._tidy()
            return list(self._tickets)

    def typical(self, kind: str) -> float | None:
        """The median seconds of the last few computations of this kind (None before the first)."""
        with self._cond:
            took = list(self._took[kind])
        return statistics.median(took) if took else None


LINE = Line()
# The Inside tab's computations that may wait in LINE at once; each holds a worker thread
# while it waits (app.py leaves 40 beyond the chats). Beyond that, gradio's own queue.
INSIDE_WAITERS = 32
# What each kind takes alone on a 2-core CPU before one has been timed here.
TYPICAL_S = {"lab check": 60.0, "shading": 30.0}


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _whose(t: Ticket, user: str | None) -> str:
    if user is not None and t.user == user:
        return "your own"
    return "another person's" if t.user is not None or user is not None else "a"


def _about(line: Line, kind: str) -> str:
    took = line.typical(kind)
    if took is None:
        return f"about {TYPICAL_S.get(kind, 60.0):.0f} s"
    return f"the last took {took:.0f} s"


def waiting_text(line: Line, ticket: Ticket, place: int) -> str:
    """'Waiting: 2nd in line, behind another person's lab check (40 s so far; about 60 s) and
    1 more waiting. …'"""
    ahead = line.ahead(ticket)
    now = time.time()
    busy = [t for t in ahead if t.began is not None]
    parts = [f"{_whose(t, ticket.user)} {t.kind} ({now - t.began:.0f} s so far; {_about(line, t.kind)})"
             for t in busy]
    queued = len(ahead) - len(busy)
    if queued:
        parts.append(f"{queued} more waiting")
    behind = f", behind {' and '.join(parts)}" if parts else ""
    return (f"Waiting: {ordinal(place)} in line{behind}. The Inside tab's computations run one at a time on this "
            f"server; yours starts when those ahead finish.")


def computing_text(line: Line, ticket: Ticket) -> str:
    so_far = time.time() - (ticket.began or time.time())
    return f"Computing your {ticket.kind}… {so_far:.0f} s so far ({_about(line, ticket.kind)})."


def in_line(kind: str, user: str | None, compute: Callable[[], object], line: Line | None = None,
            poll_s: float = 1.0) -> Iterator[tuple[str, object]]:
    """Run `compute()` in its turn in `line` (LINE by default), yielding what the page shows
    meanwhile: ("wait", text) while others go first, ("busy", text) while it computes, then
    ("done", its result). The computation runs in a thread of its own, which leaves the line
    when it ends: closing this generator (the page closed) while it computes never lets a
    second one start beside it. An error in `compute` is raised here."""
    line = LINE if line is None else line
    ticket = line.join(kind, user)
    handed = False
    try:
        first = True
        # A yield every poll: gradio can close this generator between two (the page closed).
        while (place := line.wait(ticket, 0 if first else poll_s)) > 0:
            yield "wait", waiting_text(line, ticket, place)
            first = False
        line.begin(ticket)
        done, box = threading.Event(), {}

        def work():
            try:
                box["result"] = compute()
            except BaseException as e:  # noqa: BLE001 — raised in the generator, below
                box["error"] = e
            finally:
                line.leave(ticket)
                done.set()

        threading.Thread(target=work, daemon=True, name=f"inside-{kind}").start()
        handed = True
        yield "busy", computing_text(line, ticket)
        while not done.wait(poll_s):
            yield "busy", computing_text(line, ticket)
    finally:
        if not handed:
            line.leave(ticket)
    if "error" in box:
        raise box["error"]
    yield "done", box["result"]
