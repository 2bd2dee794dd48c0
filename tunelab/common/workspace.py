"""Where TuneLab keeps its files.

One workspace folder holds everything a user makes: `runs/<run_id>/` (one folder a
run), `models/` (the bundled model converted to safetensors, cached), `data/`
(uploaded datasets) and `labels.db` (preference labels). `TUNELAB_HOME` chooses it;
the default is `./workspace`, or `/data/tunelab` on a Hugging Face Space with
persistent storage.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def home() -> Path:
    """The workspace root (created on first use)."""
    env = os.environ.get("TUNELAB_HOME")
    if env:
        root = Path(env)
    elif os.environ.get("SPACE_ID") and Path("/data").is_dir():
        root = Path("/data/tunelab")
    else:
        root = Path("workspace")
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str) -> Path:
    d = home() / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def runs_dir() -> Path:
    return _sub("runs")


def models_dir() -> Path:
    return _sub("models")


def data_dir() -> Path:
    return _sub("data")


def safe_name(name: str, max_len: int = 64) -> str:
    """A file-system-safe version of a user-typed name: no slashes, no `..`, no odd characters.

    Raises ValueError when nothing usable is left (e.g. '../' or '///')."""
    cleaned = _SAFE.sub("-", str(name)).strip(".-_")[:max_len].strip(".-_")
    if not cleaned:
        raise ValueError(f"name {name!r} has no usable characters (use letters, digits, '.', '-', '_')")
    return cleaned


def inside(root: Path, path: str | Path) -> Path:
    """Resolve `path` under `root`, refusing anything that would land outside it."""
    root = Path(root).resolve()
    p = (root / path).resolve()
    if p != root and root not in p.parents:
        raise ValueError(f"{path}: outside the allowed folder {root}")
    return p
