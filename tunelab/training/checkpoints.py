"""Checkpoints of a run: which are complete, and tidying the ones a kill cut short.

The Trainer writes a checkpoint folder's trainer_state.json last, so a folder whose state
file is missing or unreadable was cut off mid-save (a kill, a full disk) and must not be
resumed from. No gradio here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"


def _checkpoints(run_dir: Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) for each checkpoint-N folder, by step."""
    ckdir = Path(run_dir) / CHECKPOINTS_DIR
    if not ckdir.is_dir():
        return []
    found = []
    for p in ckdir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if not m or not p.is_dir():
            continue
        try:
            json.loads((p / "trainer_state.json").read_text())
            complete = True
        except (OSError, ValueError):
            complete = False
        found.append((int(m.group(1)), p, complete))
    return sorted(found)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder that was written completely."""
    complete = [p for _, p, ok in _checkpoints(run_dir) if ok]
    return complete[-1] if complete else None


def drop_incomplete(run_dir: Path) -> list[str]:
    """Remove half-written checkpoint folders before a resume, so the Trainer's rotation
    (newest by mtime) never keeps one of them in place of a complete checkpoint."""
    dropped = []
    for _, p, ok in _checkpoints(run_dir):
        if not ok:
            shutil.rmtree(p, ignore_errors=True)
            dropped.append(p.name)
    return dropped
