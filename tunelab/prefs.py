"""The preference label store: "answer A is better than B", one SQLite row a vote.

    store = LabelStore()                      # workspace/labels.db (WAL mode)
    store.add("concise", prompt=[{"role": "user", "content": "Hi?"}],
              answer_a="Hello!", answer_b="Well, greetings are...",
              source_a={"model": "base"}, source_b={"model": "run-42"},
              vote="a", annotator="ana", key="click-7f3e")
    store.export_dpo("concise", "pairs.jsonl")   # prompt / chosen / rejected for DPOTrainer

A is the answer shown on the left, B the one on the right; `source_*` says which model
(or run) and which sampling settings produced each, so a blind vote keeps its
provenance. Every `add` commits (synchronous=FULL) before it returns, so a vote the UI
acknowledged survives a crash, and its `key` makes a retried or double-clicked submit
a no-op instead of a second row (without a key, the vote's content is its key). Votes
belong to named preference sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from . import workspace

VOTES = ("a", "b", "tie", "both_bad")
DB_FILE = "labels.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sets (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    set_name    TEXT NOT NULL REFERENCES sets(name),
    prompt      TEXT NOT NULL,               -- JSON list of {role, content}
    answer_a    TEXT NOT NULL,               -- shown on the left
    answer_b    TEXT NOT NULL,               -- shown on the right
    source_a    TEXT NOT NULL,               -- JSON: model / run / sampling settings
    source_b    TEXT NOT NULL,
    vote        TEXT NOT NULL CHECK (vote IN ('a', 'b', 'tie', 'both_bad')),
    chosen_text TEXT,                        -- the better answer as edited, if it was
    annotator   TEXT NOT NULL,
    origin      TEXT NOT NULL DEFAULT 'arena',
    created     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_set ON labels(set_name, id);
"""


class LabelError(ValueError):
    """A vote or an import that cannot be stored; the message names the field."""


class LabelStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else workspace.home() / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per call: safe from any thread, and a writer
        # waits (busy timeout) instead of failing with "database is locked".
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.row_factory = sqlite3.Row
        return db

    # --- sets -----------------------------------------------------------------------------
    def create_set(self, name: str, description: str = "") -> str:
        name = workspace.safe_name(name)
        with closing(self._connect()) as db:
            db.execute("INSERT OR IGNORE INTO sets(name, description, created) VALUES (?, ?, ?)",
                       (name, description, time.time()))
        return name

    def sets(self) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT s.name, s.description, s.created, COUNT(l.id) AS labels, "
                "SUM(l.vote IN ('a', 'b')) AS pairs FROM sets s LEFT JOIN labels l ON l.set_name = s.name "
                "GROUP BY s.name ORDER BY s.created").fetchall()
        return [dict(r) | {"pairs": r["pairs"] or 0} for r in rows]

    # --- votes ----------------------------------------------------------------------------
    def add(self, set_name: str, *, prompt: list[dict], answer_a: str, answer_b: str, vote: str,
            annotator: str, source_a: dict | None = None, source_b: dict | None = None,
            key: str | None = None, chosen_text: str | None = None, origin: str = "arena") -> tuple[int, bool]:
        """Store one vote; return (row id, True if new). The same `key` again returns the
        first row's id and False: a retry never saves twice."""
        if vote not in VOTES:
            raise LabelError(f"vote: must be one of {', '.join(VOTES)} (got {vote!r})")
        if not isinstance(prompt, list) or not prompt or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in prompt):
            raise LabelError("prompt: must be a non-empty list of {role, content} messages")
        for field, text in (("answer_a", answer_a), ("answer_b", answer_b)):
            if not isinstance(text, str) or not text.strip():
                raise LabelError(f"{field}: must be a non-empty string")
        if chosen_text is not None and not chosen_text.strip():
            raise LabelError("chosen_text: the edited answer is empty")
        annotator = (annotator or "").strip()
        if not annotator:
            raise LabelError("annotator: say who is labelling (a name)")
        set_name = self.create_set(set_name)
        key = key or _content_key(set_name, prompt, answer_a, answer_b, vote, annotator)
        with closing(self._connect()) as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO labels(key, set_name, prompt, answer_a, answer_b, source_a, source_b, "
                "vote, chosen_text, annotator, origin, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, set_name, json.dumps(prompt), answer_a, answer_b, json.dumps(source_a or {}),
                 json.dumps(source_b or {}), vote, chosen_text, annotator[:100], origin, time.time()))
            if cur.rowcount == 1:
                return cur.lastrowid, True
            return db.execute("SELECT id FROM labels WHERE key = ?", (key,)).fetchone()[0], False

    def labels(self, set_name: str) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM labels WHERE set_name = ? ORDER BY id", (set_name,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("prompt", "source_a", "source_b"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    def count(self, set_name: str | None = None) -> int:
        with closing(self._connect()) as db:
            if set_name is None:
                return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM labels WHERE set_name = ?", (set_name,)).fetchone()[0]

    # --- export / import --------------------------------------------------------------------
    def export_dpo(self, set_name: str, path: str | Path) -> dict:
        """Write the set's decided votes as TRL conversational preference rows:
        {"prompt": [...messages], "chosen": [assistant], "rejected": [assistant]}.
        Ties and both-bad votes carry no preference: they are left out and counted."""
        counts = {"written": 0, "tie": 0, "both_bad": 0}
        lines = []
        for row in self.labels(set_name):
            if row["vote"] in ("tie", "both_bad"):
                counts[row["vote"]] += 1
                continue
            better, worse = ("answer_a", "answer_b") if row["vote"] == "a" else ("answer_b", "answer_a")
            chosen = row["chosen_text"] if row["chosen_text"] is not None else row[better]
            lines.append(json.dumps({"prompt": row["prompt"],
                                     "chosen": [{"role": "assistant", "content": chosen}],
                                     "rejected": [{"role": "assistant", "content": row[worse]}]}))
            counts["written"] += 1
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
        return counts

    def import_pairs(self, set_name: str, path: str | Path, annotator: str = "import") -> dict:
        """Add every pair of a preference file (prompt/chosen/rejected or sharegpt ranking;
        any format `tunelab.data` reads) to a set as an 'A is better' vote. Importing the
        same file twice adds nothing the second time."""
        from .data import load_examples
        fmt, rows = load_examples(path, "dpo")  # raises DataError naming the file/row/field
        added = 0
        source = {"model": "import", "file": Path(path).name}
        for ex in rows:
            chosen, rejected = ex["chosen"][-1]["content"], ex["rejected"][-1]["content"]
            key = "import:" + _digest(set_name, ex["prompt"], chosen, rejected)
            _, new = self.add(set_name, prompt=ex["prompt"], answer_a=chosen, answer_b=rejected, vote="a",
                              annotator=annotator, source_a=source, source_b=source, key=key, origin="import")
            added += new
        return {"format": fmt, "rows": len(rows), "added": added}


def dpo_run_config(store: LabelStore, set_name: str, *, model: str, adapter: str = "lora",
                   max_steps: int = 30, beta: float = 0.1, min_pairs: int = 2):
    """A DPO run config trained on a preference set: the set is exported (as it is now)
    to a new file in the workspace's data folder, so the run keeps pointing at exactly
    the pairs it trained on even after more votes come in. Returns (config, counts)."""
    from .config import RunConfig

    store.labels(set_name)  # a missing set reads as empty: say so below
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = workspace.data_dir() / f"prefs-{workspace.safe_name(set_name)}-{stamp}.jsonl"
    counts = store.export_dpo(set_name, path)
    if counts["written"] < min_pairs:
        path.unlink(missing_ok=True)
        raise LabelError(f"set {set_name!r}: DPO needs at least {min_pairs} decided votes (A or B better); "
                         f"it has {counts['written']} (ties: {counts['tie']}, both bad: {counts['both_bad']})")
    cfg = RunConfig.from_dict({
        "method": "dpo", "model": model, "name": f"dpo-{workspace.safe_name(set_name)}",
        "data": {"train": str(path), "eval_fraction": 0.0},
        # DPO moves a tuned policy a little away from its reference: a lower lr than SFT.
        "train": {"max_steps": int(max_steps), "batch_size": min(4, counts["written"]), "lr": 5.0e-5,
                  "max_length": 256, "save_steps": 10},
        "dpo": {"beta": float(beta), "adapter": adapter},
    })
    cfg.validate()
    return cfg, counts | {"file": str(path)}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _content_key(*parts) -> str:
    return "content:" + _digest(*parts)
