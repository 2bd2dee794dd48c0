"""The run registry over the workspace: list, look up, rename, delete, and a run as an export reads it.

Each run is a folder `runs/<run_id>/`; its `status.json` says what it is doing. A run
marked "running" whose process no longer exists (the machine slept, the process was
killed) is reported — and rewritten — as "interrupted", never left "running".
"""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

from ..common import workspace
from ..export.source import ExportSource
from .config import RunConfig
from .checkpoints import last_checkpoint
from .runfolder import MODEL_DIR, STATUS_FILE, SUMMARY_FILE, RunError, Status, read_json, write_json_atomic
from .stopping import STOP_FILE, cancelled_note


def find_run(ref: str | Path) -> Path:
    """A run folder from its id (or a unique id prefix) or its path."""
    p = Path(ref)
    if p.is_dir() and (p / "config.yaml").is_file():
        return p.resolve()
    root = workspace.runs_dir()
    name = str(ref)
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise RunError(f"no run named {name!r} in {root}")
    exact = root / name
    if exact.is_dir():
        return exact
    matches = [d for d in root.iterdir() if d.is_dir() and d.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunError(f"no run named {name!r} in {root}")
    raise RunError(f"{name!r} matches several runs: {', '.join(sorted(m.name for m in matches))}")


def _alive(pid, pid_start) -> bool:
    if not pid:
        return False
    import psutil
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent
            return False
        start = proc.create_time()
    except (psutil.Error, ValueError):
        return False
    # A recycled pid belongs to a process that started later than ours.
    return pid_start is None or abs(start - float(pid_start)) < 1.0


def run_status(run_dir: Path) -> dict:
    """status.json of a run, with a dead "running" run rewritten as "interrupted"."""
    run_dir = Path(run_dir)
    st = read_json(run_dir / STATUS_FILE)
    if not st:
        st = {"run_id": run_dir.name, "status": "unknown"}
    if st.get("status") in ("running", "starting") and not _alive(st.get("pid"), st.get("pid_start")):
        if (run_dir / STOP_FILE).exists() and not st.get("step"):
            # Stopped before it could catch the stop (its first instant; see stopping.py).
            st.update(status="cancelled", note=cancelled_note(0), error=None)
        elif st["status"] == "starting":
            # It died before training began: the reason is the CLI's one-line error.
            st["status"] = "failed"
            st["error"] = _last_error(run_dir) or "the training process exited before it started"
        else:
            st["status"] = "interrupted"
            st["error"] = st.get("error") or "the training process ended without finishing (killed or crashed)"
        write_json_atomic(run_dir / STATUS_FILE, st)
    st["resumable"] = st.get("status") in ("interrupted", "stopped", "failed", "cancelled") and \
        last_checkpoint(run_dir) is not None
    return st


def _last_error(run_dir: Path) -> str | None:
    log = run_dir / "train.log"
    if not log.is_file():
        return None
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    return errors[-1][len("error: "):] if errors else (lines[-1] if lines else None)


def list_runs() -> list[dict]:
    """Every run in the workspace, newest first, as flat dicts (status + summary)."""
    out = []
    for d in sorted(workspace.runs_dir().iterdir(), reverse=True):
        if not d.is_dir() or not (d / "config.yaml").is_file():
            continue
        st = run_status(d)
        summary = read_json(d / SUMMARY_FILE) or st.get("summary") or {}
        out.append({
            "run_id": d.name, "status": st.get("status"), "method": st.get("method"),
            "model": st.get("model"), "data": st.get("data"), "step": st.get("step"),
            "max_steps": st.get("max_steps"), "loss": summary.get("final_loss", st.get("loss")),
            "eval_loss": summary.get("final_eval_loss"), "wall_time_s": summary.get("wall_time_s"),
            "tokens_per_s": summary.get("tokens_per_s"), "peak_memory_mb": summary.get("peak_memory_mb"),
            "trainable_pct": summary.get("trainable_pct"), "error": st.get("error"),
            "resumable": st.get("resumable"), "path": str(d),
            "owner": st.get("owner"), "title": st.get("title"), "stopped_by": st.get("stopped_by"),
        })
    return out


def delete_run(ref: str) -> None:
    d = find_run(ref)
    status = run_status(d).get("status")
    if status in ("running", "starting"):
        raise RunError(f"{d.name} is still running; stop it first")
    if status == "queued":
        raise RunError(f"{d.name} is queued to train; cancel it first (Stop in the Train tab)")
    shutil.rmtree(d)


MAX_TITLE = 80   # characters: a title is a label in a table, not a description


def check_title(title) -> str:
    """A run's display title, stripped; RunError naming what is wrong with it."""
    text = str(title or "").strip()
    if not text:
        raise RunError("title: must not be empty")
    if len(text) > MAX_TITLE:
        raise RunError(f"title: at most {MAX_TITLE} characters (got {len(text)})")
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise RunError(f"title: no control characters (found {bad!r})")
    return text


def rename_run(ref: str, title: str) -> str:
    """Give a run a display title (status.json `title`). The folder and the run id stay as
    they are: labels, the arena and the CLI name runs by id. Returns the title stored."""
    d = find_run(ref)
    text = check_title(title)
    Status(d).update(title=text)
    return text


def run_config(ref: str) -> RunConfig:
    return RunConfig.from_yaml(find_run(ref) / "config.yaml")


def export_source(ref: str | Path) -> ExportSource:
    """Run `ref` as the export package reads it (`tunelab.export`): its folder, saved model,
    status and summary; its config is read once an export needs it."""
    run_dir = find_run(ref)
    state = run_status(run_dir)
    return ExportSource(run_dir=run_dir, model_dir=run_dir / MODEL_DIR, status=state.get("status"),
                        summary=read_json(run_dir / SUMMARY_FILE) or state.get("summary") or {},
                        read_config=lambda: RunConfig.from_yaml(run_dir / "config.yaml"))
