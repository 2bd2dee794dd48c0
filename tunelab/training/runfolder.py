"""A run's folder on disk: its file names, status.json, and the error a run reports.

What both the run (run.py, which writes a run folder) and the registry (runs.py, which
reads them) need, kept apart so neither imports the other: the names of the files in
`runs/<run_id>/`, `RunError`, a new run's id, JSON written atomically and read
forgivingly, and `Status`, the writer of status.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..common import workspace
from ..common.errors import RunError  # noqa: F401  (re-exported: most code imports it from here)
from .config import RunConfig

STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"


def new_run_id(cfg: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = workspace.safe_name(cfg.name) if cfg.name else cfg.method
    base = f"{stamp}-{suffix}"
    run_id, n = base, 1
    while (workspace.runs_dir() / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write via a temp file + rename so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# Fields the app writes while a run's own process writes the rest (who owns it, its title,
# who stopped it, what Start changed to fit it in memory): a writer takes them from the file as it is now, so a run's next step
# never writes back what it read at its start.
APP_FIELDS = ("owner", "title", "stopped_by", "stop_requested_at", "memory_note")


class Status:
    """status.json: what a reader needs to know about a run without parsing events."""

    def __init__(self, run_dir: Path, **initial):
        self.path = Path(run_dir) / STATUS_FILE
        self.state = read_json(self.path) | initial

    def update(self, **fields) -> None:
        on_disk = read_json(self.path)
        self.state.update({k: on_disk[k] for k in APP_FIELDS if k in on_disk})
        self.state.update(fields, updated=time.time())
        write_json_atomic(self.path, self.state)


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), or None where it is gone or cannot be read:
    with the pid it names one process, not a later one that reused the number."""
    try:
        import psutil
        return psutil.Process(pid).create_time()
    except Exception:
        return None
