"""What an instructor sees of the room: who trains, who waits, each person's runs and
labels, and the machine's load, read from the workspace at the moment it is asked.

    snap = snapshot()
    snap["training"]   # [{"owner", "run_id", "method", "step", "max_steps", "started", "cpu_percent"}]
    snap["waiting"]    # [{"place", "owner", "run_id", "method", "queued_at"}], first in line first
    snap["people"]     # [{"person", "runs": {status: n}, "votes", "thumbs_up", "thumbs_down"}]
    snap["machine"]    # CPU % a core, load average, memory, training processes, the app's CPU %

Nothing is cached: runs come from their status.json (training.runs.run_status, which
also marks a run whose process died "interrupted"), the line from the queue
(jobs.queued), labels from the workspace's label store. A run or label with no owner
(started without a login, or from the CLI) is the host's. Who may see this is the
page's question (ui/room_logic.py). No gradio here.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict

from ..arena.prefs import DB_FILE, LabelStore
from ..common import workspace
from ..training.runs import run_status
from . import jobs

HOST = "(host)"   # the owner of a run started without a login or from the CLI
LIVE = ("running", "starting")


def run_statuses() -> list[dict]:
    """Every run's status.json (oldest first), with its run id."""
    out = []
    for d in sorted(workspace.runs_dir().iterdir()):
        if d.is_dir() and (d / "status.json").is_file():
            out.append(run_status(d) | {"run_id": d.name})
    return out


def owner(status: dict) -> str:
    return status.get("owner") or HOST


def training(statuses: list[dict], cpu: dict[int, float] | None = None) -> list[dict]:
    """The runs training now (or loading their model), in the order they started, with
    their process's CPU % where `cpu` (from process_cpu) has it."""
    live = [s for s in statuses if s.get("status") in LIVE]
    live.sort(key=lambda s: s.get("started") or s.get("updated") or 0.0)
    cpu = cpu or {}
    return [{"owner": owner(s), "run_id": s["run_id"], "method": s.get("method"), "status": s.get("status"),
             "step": s.get("step") or 0, "max_steps": s.get("max_steps"), "started": s.get("started"),
             "cpu_percent": cpu.get(s.get("pid"))} for s in live]


def waiting(statuses: list[dict]) -> list[dict]:
    """The runs queued for a training slot, first in line first, with their place."""
    by_id = {s["run_id"]: s for s in statuses}
    out = []
    for place, run_id in enumerate(jobs.queued(), 1):
        s = by_id.get(run_id) or {}
        out.append({"place": place, "owner": owner(s), "run_id": run_id, "method": s.get("method"),
                    "queued_at": s.get("queued_at")})
    return out


def labels_by_annotator() -> dict[str, dict]:
    """{annotator: {"votes", "thumbs_up", "thumbs_down"}} over every set in the label store
    (none when the workspace has no labels.db yet: looking never creates one)."""
    if not (workspace.home() / DB_FILE).is_file():
        return {}
    store = LabelStore()
    counts: dict[str, Counter] = defaultdict(Counter)
    for s in store.sets():
        for row in store.labels(s["name"]):
            counts[row["annotator"]]["votes"] += 1
        for row in store.thumbs(s["name"]):
            counts[row["annotator"]]["thumbs_up" if row["up"] else "thumbs_down"] += 1
    return {who: {k: c[k] for k in ("votes", "thumbs_up", "thumbs_down")} for who, c in counts.items()}


def people(statuses: list[dict], labels: dict[str, dict]) -> list[dict]:
    """One row a person (a run owner or an annotator), by name, the host's runs last."""
    runs: dict[str, Counter] = defaultdict(Counter)
    for s in statuses:
        runs[owner(s)][s.get("status") or "unknown"] += 1
    names = sorted(set(runs) | set(labels), key=lambda n: (n == HOST, n.lower()))
    none = {"votes": 0, "thumbs_up": 0, "thumbs_down": 0}
    return [{"person": n, "runs": dict(runs.get(n, {}))} | labels.get(n, none) for n in names]


# --------------------------------------------------------------------------- the machine

_procs: dict[int, object] = {}   # psutil.Process by pid: cpu_percent() measures since its last call
_procs_lock = threading.Lock()
_cpu_primed = False


def process_cpu(pids: list[int | None], prime_s: float = 0.25) -> dict[int, float]:
    """CPU % of each live pid since it was last asked (100 = one core). A pid asked for the
    first time is measured over `prime_s` seconds instead of reading 0."""
    import psutil
    fresh, out = [], {}
    with _procs_lock:
        for pid in {p for p in pids if p}:
            proc = _procs.get(pid)
            try:
                if proc is None:
                    proc = _procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)
                    fresh.append(pid)
            except psutil.Error:
                continue
        if fresh:
            time.sleep(prime_s)
        for pid in {p for p in pids if p}:
            try:
                out[pid] = _procs[pid].cpu_percent(None)
            except (KeyError, psutil.Error):
                _procs.pop(pid, None)
        for pid in [p for p in _procs if p not in out and p != os.getpid()]:   # ended: forget them
            if not _procs[pid].is_running():
                del _procs[pid]
    return out


def app_children() -> list[int]:
    """The app's child processes (its runs and a standby waiting for Start)."""
    import psutil
    try:
        return [c.pid for c in psutil.Process().children(recursive=True)]
    except psutil.Error:
        return []


def machine(train_pids: list[int], children: list[int], cpu: dict[int, float]) -> dict:
    """The load now: CPU % a core (since the last look), the load average, memory, how many
    training processes run and their CPU %, the app's own CPU % and its other children's
    (a standby training process waiting for Start). `cpu` is process_cpu's answer for
    the app, the training processes and the children."""
    import psutil
    global _cpu_primed
    if not _cpu_primed:   # the first call has nothing to compare with
        psutil.cpu_percent(None, percpu=True)
        time.sleep(0.25)
        _cpu_primed = True
    per_core = psutil.cpu_percent(None, percpu=True)
    mem = psutil.virtual_memory()
    app = os.getpid()
    others = [p for p in children if p not in train_pids]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"cpu_per_core": per_core, "cores": len(per_core), "load_average": tuple(load),
            "memory_used_mb": (mem.total - mem.available) / 2**20, "memory_available_mb": mem.available / 2**20,
            "memory_total_mb": mem.total / 2**20,
            "training_processes": len(train_pids),
            "training_cpu_percent": sum(cpu.get(p, 0.0) for p in train_pids),
            "app_cpu_percent": cpu.get(app, 0.0),
            "other_children": len(others), "other_children_cpu_percent": sum(cpu.get(p, 0.0) for p in others)}


def snapshot() -> dict:
    """Everything the room view shows, read now."""
    statuses = run_statuses()
    pids = [s["pid"] for s in statuses if s.get("status") in LIVE and s.get("pid")]
    children = app_children()
    cpu = process_cpu([os.getpid(), *pids, *children])   # one measurement for every table
    return {"at": time.time(), "training": training(statuses, cpu), "waiting": waiting(statuses),
            "people": people(statuses, labels_by_annotator()), "machine": machine(pids, children, cpu),
            "runs": len(statuses)}
