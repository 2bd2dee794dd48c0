"""The Room tab's logic: who may see the room, and the room as the page shows it.

    room_logic.may_see(user, logins)        # an admin (TUNELAB_ADMINS) of an app with logins
    view = room_logic.room_view(user, logins)
    view["head"], view["training"], view["waiting"], view["people"], view["machine"], view["inside"]

The figures come from tunelab.service.room.snapshot(), read at the moment of asking;
this module turns them into tables and lines, and refuses anyone who may not see them.
Without logins the tab is hidden: the one person on loopback sees their runs in the Runs
tab, and there is no room to watch. No gradio here (room_tab.py builds the widgets).
"""

from __future__ import annotations

import time

import pandas as pd

from ..common.words import counted
from ..service import access, hosting, room
from . import inside_logic, logic

TRAINING_COLUMNS = ["Person", "Run", "Method", "Step", "Running for", "CPU %"]
WAITING_COLUMNS = ["Place", "Person", "Run", "Method", "Waiting for"]
PEOPLE_COLUMNS = ["Person", "Runs", "Votes", "👍", "👎"]
# The order a person's run counts are listed in.
STATUS_ORDER = ("running", "starting", "queued", "finished", "stopped", "failed", "interrupted", "cancelled")
REFUSED = "The room view is for the host: users named in TUNELAB_ADMINS, on an app with logins."


def logins_on() -> bool:
    try:
        return bool(hosting.configured_auth())
    except hosting.HostingError:
        return False


def may_see(user: str | None, logins: bool | None = None) -> bool:
    """Only an admin of an app with logins (without logins the tab is hidden: see above)."""
    logins = logins_on() if logins is None else logins
    return bool(logins and user and user in access.admins())


def _ago(t: float | None, now: float) -> str:
    return logic.fmt_duration(now - t) if t else "—"


def _cpu(p: float | None) -> str:
    return "—" if p is None else f"{p:.0f}"


def runs_text(counts: dict[str, int]) -> str:
    """{"finished": 2, "running": 1} -> '1 running, 2 finished'."""
    order = [s for s in STATUS_ORDER if s in counts] + sorted(s for s in counts if s not in STATUS_ORDER)
    return ", ".join(f"{counts[s]} {s}" for s in order) or "none"


def training_table(rows: list[dict], now: float) -> pd.DataFrame:
    return pd.DataFrame([[r["owner"], r["run_id"], r["method"] or "—",
                          f"{r['step']} / {r['max_steps'] or '?'}" if r["status"] == "running" else "loading",
                          _ago(r["started"], now), _cpu(r["cpu_percent"])] for r in rows],
                        columns=TRAINING_COLUMNS)


def waiting_table(rows: list[dict], now: float) -> pd.DataFrame:
    return pd.DataFrame([[r["place"], r["owner"], r["run_id"], r["method"] or "—", _ago(r["queued_at"], now)]
                         for r in rows], columns=WAITING_COLUMNS)


def people_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r["person"], runs_text(r["runs"]), r["votes"], r["thumbs_up"], r["thumbs_down"]]
                         for r in rows], columns=PEOPLE_COLUMNS)


def machine_text(m: dict) -> str:
    """One line: CPU % a core, the load average, memory, the training processes and the app."""
    gb = 1024
    cores = ", ".join(f"{p:.0f}%" for p in m["cpu_per_core"])
    load = " / ".join("—" if x is None else f"{x:.2f}" for x in m["load_average"])
    trainings = counted(m["training_processes"], "training process", "training processes")
    text = (f"CPU a core: {cores} · load average {load} (1, 5, 15 min; {m['cores']} cores) · memory "
            f"{m['memory_used_mb'] / gb:.1f} GB used, {m['memory_available_mb'] / gb:.1f} GB available of "
            f"{m['memory_total_mb'] / gb:.1f} GB · {trainings} ({m['training_cpu_percent']:.0f}% CPU) · "
            f"the app {m['app_cpu_percent']:.0f}% CPU")
    if m["other_children"]:
        others = counted(m["other_children"], "other child process", "other child processes")
        text += (f" · {others} of the app, such as a standby training process waiting for Start "
                 f"({m['other_children_cpu_percent']:.0f}% CPU)")
    return text + ". 100% is one core."


def inside_text(line: inside_logic.Line, now: float) -> str:
    """Who computes in the Inside tab's line, and who waits."""
    tickets = line.tickets()
    busy = [t for t in tickets if t.began is not None]
    waiting = [t for t in tickets if t.began is None]
    who = lambda t: t.user or "someone"   # noqa: E731
    parts = [f"{who(t)}'s {t.kind} computing ({now - t.began:.0f} s)" for t in busy] or ["nothing computing"]
    if waiting:
        parts.append(f"{len(waiting)} waiting: " + ", ".join(f"{who(t)}'s {t.kind}" for t in waiting))
    return "Inside tab (one computation at a time): " + "; ".join(parts) + "."


def room_view(user: str | None, logins: bool | None = None) -> dict:
    """What the Room tab shows to `user`: for an admin the room read now; for anyone else
    only a refusal line and empty tables (the server decides, whatever the page asked)."""
    if not may_see(user, logins):
        return {"allowed": False, "head": logic.message_html(REFUSED, "warn"),
                "training": pd.DataFrame(columns=TRAINING_COLUMNS), "waiting": pd.DataFrame(columns=WAITING_COLUMNS),
                "people": pd.DataFrame(columns=PEOPLE_COLUMNS), "machine": "", "inside": ""}
    snap = room.snapshot()
    now = snap["at"]
    n_train, n_wait = len(snap["training"]), len(snap["waiting"])
    head = (f"Read from the workspace at {time.strftime('%H:%M:%S', time.localtime(now))}: "
            f"{counted(len(snap['people']), 'person', 'people')}, {counted(snap['runs'], 'run')}; "
            f"{n_train} training, {n_wait} waiting for a training slot.")
    return {"allowed": True, "head": logic.message_html(head, "info"),
            "training": training_table(snap["training"], now), "waiting": waiting_table(snap["waiting"], now),
            "people": people_table(snap["people"]),
            "machine": logic.message_html(machine_text(snap["machine"]), "info"),
            "inside": logic.message_html(inside_text(inside_logic.LINE, now), "info")}
